"""kubetune: fine-tune LLMs on Kubernetes, serve them, and keep them healthy."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kubetune")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"
