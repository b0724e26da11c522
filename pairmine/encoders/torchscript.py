"""``torchscript:PATH``: a TorchScript module that maps ``(N, 3, H, W)`` to ``(N, dim)``.

The module is used as it is: it gives whatever it was scripted to give, so ``--features`` is
refused and ``--arch`` is ignored. ``dim`` is found by running one dummy batch. Preprocess is
ImageNet's (resize 256, centre crop 224, ImageNet mean/std).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from pairmine.encoders.base import (
    Encoder,
    EncoderKind,
    EncoderOptions,
    Preprocess,
    keys_match,
    register_encoder,
)
from pairmine.errors import CheckpointError, EncoderError

log = logging.getLogger(__name__)


def load(args: str, opts: EncoderOptions) -> Encoder:
    import torch

    if opts.features is not None:
        raise EncoderError("a TorchScript encoder gives what it was scripted to give",
                           "drop --features")
    if opts.arch is not None:
        log.warning("--arch %s ignored: a TorchScript file carries its own architecture",
                    opts.arch)
    p = Path(args)
    if not p.exists():
        raise CheckpointError(f"TorchScript file {p} does not exist", "check the path")
    if not p.is_file():
        raise CheckpointError(f"TorchScript file {p} is not a file", "give the .pt file")
    try:
        with warnings.catch_warnings():
            # torch marks TorchScript deprecated; existing exported encoders still need it
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(str(p), map_location="cpu")  # type: ignore[no-untyped-call]
    except (RuntimeError, ValueError, OSError) as exc:
        # torch's first sentence names the cause; the rest is generic advice about corruption
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]
        raise CheckpointError(f"{p} is not a TorchScript archive: {first[:200]}",
                              "save it with torch.jit.script(model).save(path); a plain "
                              "state dict needs another kind (see `pairmine encoders`)") from None
    model.eval()
    preprocess = Preprocess.imagenet()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, 3, preprocess.crop, preprocess.crop))
    except Exception as exc:  # a scripted model can raise anything on the wrong input
        raise EncoderError(f"TorchScript model {p} failed on a (2, 3, 224, 224) batch: "
                           f"{str(exc).strip().splitlines()[0][:200] if str(exc) else exc!r}",
                           "it must map (N, 3, 224, 224) images to (N, dim) features") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise EncoderError(f"TorchScript model {p} returns {shape}, not (N, dim)",
                           "script a module whose forward returns one (N, dim) tensor")
    return Encoder(spec=f"torchscript:{args}", model=model, dim=int(out.shape[1]),
                   preprocess=preprocess, arch="torchscript", features="model",
                   info={"kind": "torchscript"})


register_encoder(EncoderKind(
    recognises=keys_match(r"^zip:[^/]+/code/"),
    name="torchscript", load=load, usage="torchscript:PATH",
    help="A TorchScript file (torch.jit.script/trace + save) mapping images to (N, dim); "
         "used as it is (no --features; --arch ignored). dim from one dummy batch. "
         "ImageNet preprocess."))
