"""STUB of torch.cuda (see torch/__init__.py): memory only."""
from . import memory  # noqa: F401
