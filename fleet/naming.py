"""Kubernetes names derived from model names.

Model names come from the MLflow registry (`match_probability_153_TAXI_trafficaware`)
and may hold upper case, underscores and any length. Kubernetes wants a DNS-1035 label:
lower case, digits and '-', starting with a letter, at most 63 characters. Lower-casing
and truncating lose information, so every name carries a short hash of the original
name: two model names that differ only in case, or only after the cut, still get
different Kubernetes names, and the same model name always gets the same one.
"""

from __future__ import annotations

import hashlib
import re

MAX_LABEL = 63
_HASH_LEN = 6
_NOT_ALLOWED = re.compile(r"[^a-z0-9-]+")


def short_hash(text: str, length: int = _HASH_LEN) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def k8s_name(model_name: str, max_length: int = MAX_LABEL) -> str:
    """A stable DNS-1035 label for `model_name`, at most `max_length` characters."""
    slug = _NOT_ALLOWED.sub("-", model_name.lower()).strip("-")
    slug = re.sub(r"-{2,}", "-", slug)
    if not slug or not slug[0].isalpha():
        slug = f"m-{slug}".rstrip("-")
    suffix = short_hash(model_name)
    room = max_length - len(suffix) - 1
    if room < 1:
        raise ValueError(f"max_length {max_length} leaves no room beside the hash")
    return f"{slug[:room].rstrip('-')}-{suffix}"
