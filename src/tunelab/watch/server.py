"""`tunelab watch RUN_DIR...`: a read-only local web page over run folders, refreshed while they train.

Werkzeug (Pallets; already installed with TensorBoard) serves it: its threaded WSGI server, routing, safe path
joining and file responses, so no HTTP is hand-written here. It binds to 127.0.0.1 unless told otherwise, answers
only GET and HEAD, and serves only image and JSON files under the watched folders: a path that leaves them (`../`,
an absolute path, a symlink pointing out) is a 404. The page itself is one jinja2 template with a few lines of
plain JavaScript that fetch it again every few seconds (no build step)."""

from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path
from typing import Callable

import jinja2
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.security import safe_join
from werkzeug.serving import WSGIRequestHandler, get_sockaddr, make_server, select_address_family
from werkzeug.utils import send_file
from werkzeug.wrappers import Request, Response

from tunelab import __version__
from tunelab.errors import TunelabError
from tunelab.watch.view import FileCache, FolderView

SERVED_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".json"}  # samples, grids, records: nothing else
TEMPLATES = [Path(__file__).parent / "templates", Path(__file__).parent.parent / "report" / "templates"]


class WatchApp:
    """The WSGI application: `/` is the page, `/files/<folder number>/<path>` a file under that watched folder."""

    def __init__(self, folders: list[Path], *, trend_window: int | None = None, refresh_s: float = 3.0):
        self.folders = [Path(os.path.abspath(folder)) for folder in folders]
        self.cache = FileCache()
        self.trend_window, self.refresh_s = trend_window, refresh_s
        self.routes = Map([Rule("/", endpoint="page", methods=["GET", "HEAD"]),  # no slash merging: no redirects
                           Rule("/files/<int:index>/<path:path>", endpoint="file", methods=["GET", "HEAD"])],
                          merge_slashes=False)
        self.templates = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)

    def __call__(self, environ, start_response):
        request = Request(environ)
        try:
            endpoint, arguments = self.routes.bind_to_environ(environ).match()
            response = getattr(self, endpoint)(request, **arguments)
        except HTTPException as e:
            response = e
        return response(environ, start_response)

    def page(self, request: Request) -> Response:
        folders = [FolderView(i, folder, self.cache, self.trend_window).context()
                   for i, folder in enumerate(self.folders)]
        html = self.templates.get_template("watch.html").render(
            folders=folders, refresh_ms=int(self.refresh_s * 1000), version=__version__,
            trend_window=self.trend_window,
            now=datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S"))
        return Response(html, mimetype="text/html", headers={"Cache-Control": "no-store"})

    def file(self, request: Request, index: int, path: str) -> Response:
        if index >= len(self.folders):
            raise NotFound()
        folder = self.folders[index]
        joined = safe_join(str(folder), path)  # None for "..", absolute paths and other escapes
        if joined is None:
            raise NotFound()
        target = Path(joined).resolve()
        if not target.is_relative_to(folder.resolve()) or target.suffix.lower() not in SERVED_SUFFIXES \
                or not target.is_file():
            raise NotFound()
        return send_file(target, request.environ, max_age=0)


class QuietRequestHandler(WSGIRequestHandler):
    """No access-log line per request (the page polls every few seconds); errors are still logged."""

    def log_request(self, code="-", size="-") -> None:
        pass


def serve(folders: list[Path], *, host: str = "127.0.0.1", port: int = 8710, trend_window: int | None = None,
          refresh_s: float = 3.0, log: Callable[[str], None] = print) -> None:
    app = WatchApp(folders, trend_window=trend_window, refresh_s=refresh_s)
    listener = listening_socket(host, port)
    server = make_server(host, listener.getsockname()[1], app, threaded=True, request_handler=QuietRequestHandler,
                         fd=listener.fileno())
    shown = f"[{host}]" if ":" in host else host
    log(f"watching {len(folders)} folder(s) at http://{shown}:{server.port}/ (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        listener.close()


def listening_socket(host: str, port: int) -> socket.socket:
    """Bound here rather than by werkzeug, which prints two lines and exits when the port is taken: here that is
    one line (`TunelabError`), like every other refusal."""
    family = select_address_family(host, port)
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(get_sockaddr(host, port, family))
        listener.listen(128)
    except OSError as e:  # port taken, an address not on this machine
        listener.close()
        raise TunelabError(f"cannot serve on {host} port {port}: {e.strerror or e} (choose another with --port)") from None
    return listener
