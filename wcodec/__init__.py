"""wcodec: video-codec-style compression of neural-network weights.

Python API:

- ``encode_file(src, dst, qp=-32, keep=(), force=False)``: safetensors to ``.wbs``;
- ``decode_file(src, dst, force=False)``: ``.wbs`` to safetensors;
- ``load(path)``: ``.wbs`` to a dict of torch tensors with their original dtypes.
"""

from wcodec.decoder import decode_file, load
from wcodec.encoder import encode_file
from wcodec.errors import InputError, WbsFormatError, WcodecError

__version__ = "0.1.0"

__all__ = ["encode_file", "decode_file", "load", "InputError", "WbsFormatError", "WcodecError",
           "__version__"]
