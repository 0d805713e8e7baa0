"""The review app (`comining review`): Gradio over `comining.review`. This module
serves it; app.layout builds the page, app.events wires it, app.views computes what it
shows. No review logic lives here.

Images reach the browser as arrays that Gradio encodes into its own cache (JPEG, a few
ms for 1000x800; PNG would take ~0.4 s); the app names no file path of its own except
the run's `exports/` folder, which the export button writes to.
"""

from __future__ import annotations

import os

# before gradio is imported anywhere: offline, no analytics, no server-side rendering
for _key, _value in (("GRADIO_ANALYTICS_ENABLED", "False"), ("HF_HUB_OFFLINE", "1"),
                     ("HF_HUB_DISABLE_TELEMETRY", "1"), ("GRADIO_SSR_MODE", "False")):
    os.environ.setdefault(_key, _value)

from app.layout import CSS, HOTKEYS, build, theme  # noqa: E402
from comining import review  # noqa: E402
from comining.cli.review import parse_auth  # noqa: E402
from comining.errors import InputError  # noqa: E402

__all__ = ["build", "launch", "parse_auth"]


def _quiet_custom_component_route() -> None:
    """Gradio 6's route for custom components' files (gradio_image_annotation's) prints
    'id=..., environment=client, type=component, file_name=...' with a bare print() on
    every page load: library noise on the user's terminal. Drop those lines only."""
    import builtins

    import gradio.routes as routes

    def print_(*args, **kwargs):
        text = " ".join(map(str, args))
        if text.startswith("id=") and ", environment=" in text and ", file_name=" in text:
            return
        builtins.print(*args, **kwargs)

    routes.print = print_


_quiet_custom_component_route()


def launch(run_dir, *, host: str = "127.0.0.1", port: int = 7860, auth=None, share: bool = False,
           block: bool = True, quiet: bool = True):
    """Serve the review app for RUN_DIR; returns (demo, url). With block=True, serves
    until interrupted. `auth` is (user, password), 'USER:PASS', or None."""
    run = review.open_run(run_dir)
    run.warm()
    if isinstance(auth, str):
        auth = parse_auth(auth)
    demo = build(run, private=auth is not None)
    demo.queue(default_concurrency_limit=4)
    try:
        _, url, share_url = demo.launch(
            server_name=host, server_port=int(port), auth=auth, share=share,
            prevent_thread_lock=True, show_error=False, quiet=quiet, ssr_mode=False,
            allowed_paths=[str((run.dir / "exports").resolve())], footer_links=[],
            enable_monitoring=False, mcp_server=False, theme=theme(), css=CSS, head=HOTKEYS,
            auth_message="comining review: sign in")
    except OSError as exc:
        run.close()
        raise InputError(None, f"cannot serve on {host}:{port}: {exc} (pick another --port)") from None
    demo.comining_run = run
    url = share_url or url
    if block:
        try:
            demo.block_thread()
        finally:
            run.close()
    return demo, url
