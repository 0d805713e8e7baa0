"""`comining review`: serve the review app over a run's store."""

from __future__ import annotations

import argparse

from comining.errors import InputError

DESCRIPTION = """\
Serve a web app to review the boxes a co-mining run mined: one image at a time with
its annotations and the candidates of each view, accept / reject / edit / undo with
keyboard shortcuts, a sortable and filterable queue, batch accept of agreed boxes, a
fast mode over crops, progress, per-checkpoint plots, and export. Decisions are saved
in RUN_DIR/comining.sqlite as they are made."""

EPILOG = """\
The app listens on 127.0.0.1 only unless --host says otherwise; it makes no public
share link unless --share is given. Use --auth when others can reach the port.

example:
  comining review --run runs/hard --port 7860
  comining review --run runs/hard --host 0.0.0.0 --auth alice:s3cret
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "review", help="review the mined boxes in a web app (accept, reject, edit, export)",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="the run folder (with comining.sqlite)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.add_argument("--auth", metavar="USER:PASS", default=None,
                   help="require this user name and password")
    p.add_argument("--share", action="store_true",
                   help="also make a temporary public gradio.live link (off by default)")
    p.set_defaults(func=run)


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """'USER:PASS' -> (user, password); None -> None."""
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise InputError(None, "--auth must be USER:PASS (both non-empty)")
    return (user, password)


def open_app(run_dir, *, host: str = "127.0.0.1", port: int = 7860, auth=None,
             share: bool = False):
    """Start serving the review app for RUN_DIR in the background; returns (demo, url).
    A missing store, a store of another schema version or a busy port is an InputError
    (one line, exit code 2)."""
    from comining.review import open_run

    if not 0 < int(port) < 65536:
        raise InputError(None, f"--port must be within 1..65535, got {port}")
    if isinstance(auth, str):
        auth = parse_auth(auth)
    open_run(run_dir).close()   # a clear one-line error before gradio is even imported

    from app.ui import launch
    return launch(run_dir, host=host, port=port, auth=auth, share=share, block=False)


def block(demo, *, while_serving=None) -> int:
    """Serve until Ctrl+C (running `while_serving()` first, if given); then close."""
    try:
        if while_serving is not None:
            while_serving()
        demo.block_thread()
    finally:
        # Also when Ctrl+C lands before block_thread() took over: the server's threads
        # would otherwise keep the process alive.
        try:
            demo.close()
        except Exception:
            pass
        run_ = getattr(demo, "comining_run", None)
        if run_ is not None:
            run_.close()
    return 0


def serve(run_dir, *, host: str = "127.0.0.1", port: int = 7860, auth=None,
          share: bool = False) -> int:
    """Serve the review app for RUN_DIR until Ctrl+C (prints the URL); returns 0."""
    demo, url = open_app(run_dir, host=host, port=port, auth=auth, share=share)
    print(f"comining review: serving {run_dir} at {url} (Ctrl+C to stop)", flush=True)
    return block(demo)


def run(args) -> int:
    return serve(args.run, host=args.host, port=args.port, auth=parse_auth(args.auth),
                 share=args.share)
