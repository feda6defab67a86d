"""The live page over a sweep folder, through the WSGI app in-process (werkzeug's test client): the sweep record's
variants with status and reason, each variant folder as a run with its own state, a validation table and the
findings with their verdicts; a file being rewritten between two loads shows its problem and then its content."""

from __future__ import annotations

import re
import time

from werkzeug.test import Client

from tunelab import atomic
from tunelab.sweep.record import SweepRecord, VariantRecord
from tunelab.train.run_status import RunStatus, ended
from tunelab.watch.server import WatchApp


def test_a_sweep_folder_shows_its_variants_their_states_and_results(tmp_path):
    sweep = tmp_path / "sweep"
    record = SweepRecord(sweep / "sweep.json", "sweep.toml", "base.toml")
    record.variants = {
        "lr-low": VariantRecord("lr-low", {"unet.learning_rate": 1e-5}, str(sweep / "lr-low"), "done", wall_s=61.0,
                                last_smoothed_loss=0.1234),
        "lr-high": VariantRecord("lr-high", {"unet.learning_rate": 1e-2}, str(sweep / "lr-high"), "failed",
                                 reason="step 3: loss nan is not finite"),
        "lr-mid": VariantRecord("lr-mid", {"unet.learning_rate": 1e-4}, str(sweep / "lr-mid")),
    }
    record.write()
    RunStatus(sweep / "lr-low", total_steps=20, step=0).end(*ended(None, 20, 20), step=20)
    RunStatus(sweep / "lr-high", total_steps=20, step=0).end(*ended(RuntimeError("step 3: loss nan"), 3, 20), step=3)
    atomic.write_json(sweep / "findings.json", {"source": "score/scoreboard.json", "findings": [
        {"statement": "a low LR keeps known shapes", "comparison": "lr-low − base", "verdict": "holds",
         "detail": "within 2 points"}]})
    client = Client(WatchApp([sweep]))

    html = client.get("/").get_data(as_text=True)
    variants = re.findall(r"<tr><th>([^<]+)</th><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td></tr>",
                          html.split('<table class="sweep">', 1)[1])
    assert variants == [("lr-low", "done", "", "61 s", "0.1234"),
                        ("lr-high", "failed", "step 3: loss nan is not finite", "–", "–"),
                        ("lr-mid", "pending", "", "–", "–")]
    runs = dict(re.findall(r'<div class="run" data-run="([^"]*)" data-state="([^"]*)"', html))
    assert runs == {"lr-high": "failed", "lr-low": "finished"}  # lr-mid has no folder yet
    assert "RuntimeError: step 3: loss nan (at step 3)" in html
    assert re.search(r'<tr class="finding" data-verdict="holds"><th>a low LR keeps known shapes</th>', html)

    (sweep / "validation.json").write_text('{"bands": [[0, 500], [500, 1000]], "sets": {"held_out": 4}, "models": [')
    html = client.get("/").get_data(as_text=True)
    assert re.search(r'<p class="problem">validation\.json: [^<]*not valid JSON', html)
    atomic.write_json(sweep / "validation.json", {
        "bands": [[0, 500], [500, 1000]], "sets": {"held_out": 4},
        "models": [{"name": "base", "scalars": {"val/held_out/mean": 0.2, "val/held_out/band_0": 0.3,
                                                "val/held_out/band_1": 0.1}},
                   {"name": "lr-low", "scalars": {"val/held_out/mean": 0.22, "val/held_out/band_0": 0.33,
                                                  "val/held_out/band_1": 0.11}}]})
    html = client.get("/").get_data(as_text=True)
    assert "not valid JSON" not in html
    assert re.search(r"<th>lr-low</th>\s*<td[^>]*>0\.2200 <span class=\"change\">\+10\.0%</span>", html)


def test_the_cache_computes_once_for_many_loads_and_again_when_a_file_changes(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from tunelab.watch.view import FileCache

    events = tmp_path / "events"
    events.write_bytes(b"1")
    cache, calls = FileCache(), []

    def compute():
        calls.append(events.read_bytes())
        time.sleep(0.2)  # a slow read: page loads at the same time wait for it instead of repeating it
        return len(calls)

    with ThreadPoolExecutor(max_workers=20) as pool:
        assert set(pool.map(lambda _: cache.get(("curves",), [events], compute), range(20))) == {1}
    events.write_bytes(b"12")
    assert cache.get(("curves",), [events], compute) == 1  # changed, but read 0.2 s ago: at most every 1.2 s
    time.sleep(0.2 * (1 + FileCache.STALE_FACTOR))
    assert cache.get(("curves",), [events], compute) == 2 and calls == [b"1", b"12"]
    events.unlink()
    assert cache.get(("curves",), [events], compute) == 2  # gone: recomputed only after the same wait


def test_a_port_already_taken_is_a_one_line_error(tmp_path):
    import socket

    import pytest

    from tunelab.errors import TunelabError
    from tunelab.watch.server import serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(TunelabError, match=rf"^cannot serve on 127\.0\.0\.1 port {port}: Address already in use "
                                               r"\(choose another with --port\)$"):
            serve([tmp_path], port=port, log=lambda line: None)
