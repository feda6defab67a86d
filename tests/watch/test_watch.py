"""`tunelab watch` as a real process on a loopback port, read by real headless Chromium while real toy runs train
(tests/train/tiny_run.py: the tiny SDXL, in-memory data, the real training loop writing status.json, TensorBoard
events, samples and checkpoints): the page shows the step advancing (two screenshots whose progress bars differ,
read from the pixels) and then "finished"; a run killed with SIGKILL shows "interrupted"; watched folders stand side
by side; a folder deleted while watched shows a message and the page keeps working. The server binds to 127.0.0.1,
serves only image and JSON files under the watched folders (404 for ../, absolute paths, symlinks out, other
files) and answers 50 page loads at once."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psutil
import pytest
from PIL import Image

from headless_chromium import chromium  # tests/: on the path with its conftest

TINY_RUN = Path(__file__).parents[1] / "train" / "tiny_run.py"
LIVE_STEPS = 60
RUNNING, FINISHED, INTERRUPTED = (31, 111, 235), (46, 160, 67), (210, 153, 34)  # the page's state colours
BAR_TRACK = (234, 238, 242)
WIDTH, HEIGHT = 1800, 1400


def write_run_config(path: Path, output_dir: Path, steps: int, **logging) -> Path:
    config = {"model": {"path": "unused"},
              "train": {"output_dir": str(output_dir), "max_steps": steps, "batch_size": 4},
              "unet": {"learning_rate": 1e-3},
              "checkpoint": {"every_n_steps": steps // 2, "every_n_epochs": 0},
              "logging": {"progress_bar": False, "tensorboard": True, "log_every_n_steps": 1,
                          "histogram_every_n_steps": 0, **logging}}
    path.write_text(json.dumps(config))
    return path


def start_training(config: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, str(TINY_RUN), str(config)], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as response:
        assert response.status == 200
        return response.read().decode("utf-8")


def runs_on(html: str) -> dict[str, tuple[str, int | None]]:
    """run name → (state, step) as the page shows them."""
    return {name: (state, int(step) if step else None) for name, state, step in
            re.findall(r'<div class="run" data-run="([^"]*)" data-state="([^"]*)"(?: data-step="(\d+)")?>', html)}


def wait_for(url: str, condition, what: str, timeout: float = 120, training: tuple = ()) -> str:
    """Load the page until `condition(runs, html)` holds; fail at once when a `training` (process, log) died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        html = get(url)
        if condition(runs_on(html), html):
            return html
        for process, log in training:
            assert process.poll() in (None, 0, -signal.SIGKILL), log.read_text()[-3000:]
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; the page shows {runs_on(html)}")


def bar_fraction(screenshot: Path, x_range: tuple[int, int]) -> float:
    """The progress bar's filled share in a column of the screenshot: running-blue pixels over the bar's width."""
    pixels = np.asarray(Image.open(screenshot).convert("RGB"), dtype=np.int16)[:, x_range[0]:x_range[1]]
    track = (np.abs(pixels - BAR_TRACK).sum(-1) < 8)
    rows = np.where(track.sum(1) > 20)[0]
    assert len(rows) >= 8, "no progress bar in this column"
    rows = rows[rows < rows[0] + 20]  # the topmost bar only
    fill = (np.abs(pixels[rows] - RUNNING).sum(-1) < 12).sum(1)
    return float(np.median(fill / (fill + track[rows].sum(1))))


def colour_box(screenshot: Path, colour) -> tuple[float, float, float, float]:
    """(x min, x max, y min, y max) of the pixels of exactly this colour."""
    pixels = np.asarray(Image.open(screenshot).convert("RGB"), dtype=np.int16)
    ys, xs = np.where(np.abs(pixels - colour).sum(-1) < 6)
    assert len(xs) > 50, f"no {colour} on the page"
    return xs.min(), xs.max(), ys.min(), ys.max()


def shoot(url: str, path: Path, profile: Path, *extra: str) -> str:
    """A screenshot and the DOM of one page load in headless Chromium."""
    result = chromium(f"--screenshot={path}", "--dump-dom", f"--window-size={WIDTH},{HEIGHT}", *extra, url,
                      profile=profile)
    assert Image.open(path).size == (WIDTH, HEIGHT)
    return result.stdout


def png(path: Path, colour=(200, 40, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def static_folder(root: Path) -> Path:
    """A folder that does not change: a failed run (status written by the trainer's own RunStatus), a run whose
    status.json is half-written, a half-written scoreboard, a sample image and a symlink out of the folder."""
    from tunelab.train.run_status import RunStatus, ended

    folder = root / "static"
    failed = folder / "failed-run"
    status = RunStatus(failed, total_steps=100, step=0)
    status.end(*ended(ValueError("loss exploded\nsecond line"), 7, 100), step=7)
    png(failed / "samples" / "step-000005" / "000-seed1.png")
    (folder / "cut-run").mkdir()
    (folder / "cut-run" / "status.json").write_text('{"state": "runn')
    (folder / "scoreboard.json").write_text('{"format": 2, "base": ')
    (failed / "checkpoints" / "step-000005" / "state").mkdir(parents=True)
    (failed / "checkpoints" / "step-000005" / "state" / "optimizer.pt").write_bytes(b"not served")
    png(root / "secret.png", (0, 0, 0))  # beside the watched folders, not under them
    (failed / "samples" / "step-000005" / "leak.png").symlink_to(root / "secret.png")
    return folder


@pytest.fixture(scope="module")
def watch(tmp_path_factory):
    root = tmp_path_factory.mktemp("watched")
    folders = SimpleNamespace(live=root / "live-run", killed=root / "killed-run", deleted=root / "deleted-run",
                              static=static_folder(root), root=root)
    process = subprocess.Popen(
        [sys.executable, "-m", "tunelab.cli", "watch", str(folders.live), str(folders.killed), str(folders.deleted),
         str(folders.static), "--port", "0", "--refresh", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        line = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, (line, process.stderr.read() if process.poll() is not None else "")
        yield SimpleNamespace(url=match.group(0), port=int(match.group(1)), process=process, **vars(folders))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_live_page_follows_a_run_to_finished_shows_a_killed_run_interrupted_and_survives_a_deleted_folder(
        watch, tmp_path):
    url = watch.url
    live = start_training(write_run_config(tmp_path / "live.json", watch.live, LIVE_STEPS, sample_every_n_steps=30,
                                           sample_prompts=["red circle"], sample_seeds=[1], sample_steps=2),
                          tmp_path / "live.log")
    killed = start_training(write_run_config(tmp_path / "killed.json", watch.killed, 100000), tmp_path / "killed.log")
    try:
        # the killed run: SIGKILL once its training loop started (status.json: running); nothing of it can then
        # write "interrupted"
        training = ((live, tmp_path / "live.log"), (killed, tmp_path / "killed.log"))
        wait_for(url, lambda runs, _: runs.get("killed-run", ("", 0))[0] == "running", "the second run to start",
                 training=training)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert json.loads((watch.killed / "status.json").read_text())["state"] == "running"  # as it was left
        shutil.copytree(watch.killed, watch.deleted)  # a third folder to delete while watched

        # two page loads while the live run trains: different steps, and the bars in the pixels say the same. The
        # run is paused (SIGSTOP) while Chromium starts and shoots, else a fast machine finishes it in between.
        wait_for(url, lambda runs, _: runs.get("live-run", ("", None))[0] == "running"
                 and (runs["live-run"][1] or 0) >= 1, "the live run's first steps", training=training)
        live.send_signal(signal.SIGSTOP)
        first = shoot(url, tmp_path / "running-1.png", tmp_path / "profile")
        live.send_signal(signal.SIGCONT)
        state, step_1 = runs_on(first)["live-run"]
        assert state == "running" and 1 <= step_1 < LIVE_STEPS
        # let it run in short bursts until the page's step moves: status.json is written at most every 2 s, so a
        # fast machine left running would finish all the steps before the next write
        deadline = time.monotonic() + 120
        while (runs_on(get(url))["live-run"][1] or 0) <= step_1:
            assert time.monotonic() < deadline and live.poll() is None, "the live run's step to advance"
            live.send_signal(signal.SIGCONT)
            time.sleep(0.05)
            live.send_signal(signal.SIGSTOP)
            time.sleep(0.1)
        second = shoot(url, tmp_path / "running-2.png", tmp_path / "profile")
        live.send_signal(signal.SIGCONT)
        state, step_2 = runs_on(second)["live-run"]
        assert state == "running" and step_1 < step_2 < LIVE_STEPS, (step_1, step_2)
        assert f"step <b class=\"step\">{step_2}</b> / {LIVE_STEPS}" in second and " img/s · ETA " in second
        bars = [bar_fraction(tmp_path / f"running-{k}.png", (0, WIDTH // 3)) for k in (1, 2)]
        assert bars[0] < bars[1], bars
        assert bars == pytest.approx([step_1 / LIVE_STEPS, step_2 / LIVE_STEPS], abs=0.02)
        states = {name: state for name, (state, _) in runs_on(second).items()}
        assert states["killed-run"] == states["deleted-run"] == "interrupted"
        assert re.search(r"its process \(pid \d+\) is gone without recording why \(killed\?\)", second)

        # a watched folder deleted: a message in its place, the page goes on
        shutil.rmtree(watch.deleted)
        html = wait_for(url, lambda runs, _: "deleted-run" not in runs, "the deleted folder to go")
        assert f"{watch.deleted} is not there (deleted or moved?)" in html and "live-run" in runs_on(html)

        assert live.wait(timeout=120) == 0, (tmp_path / "live.log").read_text()[-3000:]
    finally:
        for process in (live, killed):
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
    final = wait_for(url, lambda runs, _: runs["live-run"] == ("finished", LIVE_STEPS), "finished")
    # virtual time runs the page's own refresh (every 1 s): the swapped-in page still says finished
    dom = shoot(url, tmp_path / "finished.png", tmp_path / "profile", "--virtual-time-budget=2500")
    assert runs_on(dom)["live-run"] == ("finished", LIVE_STEPS) and runs_on(dom)["killed-run"][0] == "interrupted"
    assert int(re.search(r'<body data-refreshes="(\d+)"', dom).group(1)) >= 1
    # the trend, the latest samples (served) and the checkpoints of the finished run
    assert re.search(r'<tr class="trend-row" data-verdict="[a-z ]+"><th>training loss</th>', final)
    samples = re.findall(r'<img src="(/files/0/samples/step-0000(\d\d)/[^"]+\.png)"', final)
    assert len(samples) == 1 and samples[0][1] == str(LIVE_STEPS)  # the latest of two sampling steps
    assert urllib.request.urlopen(url.rstrip("/") + samples[0][0], timeout=30).read().startswith(b"\x89PNG")
    assert f"Checkpoints: step-{LIVE_STEPS // 2:06d}, step-{LIVE_STEPS:06d}" in final
    # the folders stand side by side: the finished run's colours left of the killed run's, on the same band
    finished_box, interrupted_box = colour_box(tmp_path / "finished.png", FINISHED), \
        colour_box(tmp_path / "finished.png", INTERRUPTED)
    assert finished_box[1] < interrupted_box[0] and interrupted_box[2] < finished_box[3]
    if os.environ.get("TUNELAB_KEEP_SCREENSHOTS"):  # for a person to look at
        for name in ("running-1.png", "running-2.png", "finished.png"):
            shutil.copy(tmp_path / name, Path(os.environ["TUNELAB_KEEP_SCREENSHOTS"]) / name)


def raw_get(port: int, path: str) -> tuple[int, str, bytes]:
    """A request with the path sent exactly as given (no client-side normalisation of ../)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path)
    response = connection.getresponse()
    out = response.status, response.getheader("Content-Type") or "", response.read()
    connection.close()
    return out


def test_only_image_and_json_files_under_the_watched_folders_are_served(watch):
    index = 3  # the static folder
    sample = f"/files/{index}/failed-run/samples/step-000005/000-seed1.png"
    status, kind, body = raw_get(watch.port, sample)
    assert status == 200 and kind == "image/png" and body == (watch.static / sample.split("/", 3)[3]).read_bytes()
    assert raw_get(watch.port, f"/files/{index}/failed-run/status.json")[0] == 200
    outside = [f"/files/{index}/../secret.png", f"/files/{index}/..%2Fsecret.png", f"/files/{index}/%2e%2e/secret.png",
               f"/files/{index}/failed-run/../../secret.png", f"/files/{index}/{watch.root / 'secret.png'}",
               f"/files/{index}//{watch.root / 'secret.png'}", f"/files/{index}/%2F{watch.root / 'secret.png'}",
               f"/files/{index}/failed-run/samples/step-000005/leak.png",  # a symlink pointing out
               f"/files/{index}/failed-run/checkpoints/step-000005/state/optimizer.pt",  # not an image or JSON
               f"/files/{index}/failed-run/samples/step-000005/", "/files/9/secret.png", "/files/-1/secret.png",
               "/../secret.png", "/etc/passwd"]
    for path in outside:
        status, _, body = raw_get(watch.port, path)
        assert status == 404 and b"\x89PNG" not in body, path
    connection = http.client.HTTPConnection("127.0.0.1", watch.port, timeout=30)
    connection.request("POST", "/")
    assert connection.getresponse().status == 405  # read-only


def test_binds_to_loopback_and_answers_50_page_loads_at_once(watch):
    listening = [c for c in psutil.Process(watch.process.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert [(c.laddr.ip, c.laddr.port) for c in listening] == [("127.0.0.1", watch.port)]
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=50) as pool:
        pages = list(pool.map(lambda _: get(watch.url), range(50)))
    elapsed = time.monotonic() - start
    assert all('<section class="folder" data-folder="3">' in page for page in pages)
    assert elapsed < 60, elapsed
    print(f"50 concurrent page loads: {elapsed:.2f} s")


def test_a_failed_run_and_half_written_files_show_as_such(watch):
    html = get(watch.url)
    runs = runs_on(html)
    assert runs["failed-run"] == ("failed", 7) and runs["cut-run"] == ("unknown", None)
    assert "ValueError: loss exploded (at step 7)" in html and "second line" not in html
    assert re.search(r"status\.json could not be read \([^)]*\)", html)
    assert "scoreboard.json: " in html and "not valid JSON" in html
