"""The review app (`comining review`): Gradio wiring over `comining.review`."""

from app.ui import build, launch, parse_auth

__all__ = ["build", "launch", "parse_auth"]
