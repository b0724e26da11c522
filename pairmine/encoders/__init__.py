"""Encoders: pretrained networks that map images to feature vectors. A registry, one contract."""

from pairmine.encoders.base import (
    ENCODERS,
    Encoder,
    Preprocess,
    list_encoders,
    load_encoder,
    register_encoder,
)

__all__ = ["ENCODERS", "Encoder", "Preprocess", "list_encoders", "load_encoder",
           "register_encoder"]
