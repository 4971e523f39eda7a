"""dlswm: Discrete Latent Space World Models, trained on Atari and deployed to the edge."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dlswm")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
