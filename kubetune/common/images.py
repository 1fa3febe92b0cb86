"""The one naming scheme of kubetune's container images.

Every image kubetune builds is `<registry>/<prefix>/<name>:<tag>[-<variant>]`, or
`<registry>/<prefix>/<name>@sha256:...` when pinned by digest. The tag is the release version
(the chart's appVersion, equal to the package version). The chart's values, the operator's
built-in defaults, the golden files, the Dockerfile's targets, `make images` and the release
workflow all derive their names from here; tests/images/test_naming.py fails on any rendered
manifest that names an image outside the scheme.

Pure and standard-library only: scripts/images.py loads this file by path, before kubetune is
installed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

REGISTRY = "ghcr.io"
"""Registry of the released images (chart value `images.registry`)."""
PREFIX = "kubetune"
"""Repository prefix under the registry (chart value `images.prefix`)."""


@dataclass(frozen=True)
class ImageTarget:
    """One image kubetune builds: a Dockerfile target and the repository and tag suffix it gets."""

    target: str
    """Stage of the repository's Dockerfile."""
    name: str
    """Repository name under `<registry>/<prefix>/`."""
    variant: str = ""
    """Tag suffix (`<tag>-<variant>`); empty for the default variant."""
    platforms: tuple[str, ...] = ("linux/amd64", "linux/arm64")
    """Platforms the release workflow builds."""
    description: str = ""


TARGETS: tuple[ImageTarget, ...] = (
    ImageTarget("operator", "operator", description="the kopf operator (no torch)"),
    ImageTarget("gateway", "gateway", description="the OpenAI-compatible gateway sidecar with the offline safety scorer"),
    ImageTarget("trainer-gpu", "trainer", platforms=("linux/amd64",),
                description="training pods, monitor CronJob and fetch init containers: CUDA torch, bitsandbytes"),
    ImageTarget("trainer-cpu", "trainer", variant="cpu",
                description="the trainer on CPU-only nodes: CPU torch, no bitsandbytes"),
)
"""Every image of a release; `make images` builds them, the release workflow pushes them."""

TRAINER_VARIANTS = {"gpu": "", "cpu": "cpu"}
"""Trainer variants (chart value `images.trainer.variant`) and their tag suffixes."""

VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"
"""The one third-party image the operator renders by default (the vLLM OpenAI server)."""

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?|\[[0-9A-Fa-f:]+\](?::[0-9]+)?)"
TAG_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
DIGEST_PATTERN = r"sha256:[a-f0-9]{64}"
IMAGE_REFERENCE_PATTERN = (
    rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::{TAG_PATTERN})?(?:@{DIGEST_PATTERN})?$"
)
"""An OCI image reference (distribution's grammar, sha256 digests), for schemas and checks."""
_REFERENCE = re.compile(IMAGE_REFERENCE_PATTERN)
_SPLIT = re.compile(rf"^(?P<repository>.+?)(?::(?P<tag>{TAG_PATTERN}))?(?:@(?P<digest>{DIGEST_PATTERN}))?$")


def tag_for(version: str) -> str:
    """A version as an image tag: a `+` (local version) is not allowed in tags."""
    return version.replace("+", "-")


def target(name: str) -> ImageTarget:
    for item in TARGETS:
        if item.target == name:
            return item
    raise KeyError(f"no image target {name!r}; known: {', '.join(t.target for t in TARGETS)}")


def repository(name: str, *, registry: str = REGISTRY, prefix: str = PREFIX) -> str:
    """`<registry>/<prefix>/<name>`; an empty registry or prefix is left out."""
    return "/".join(part.strip("/") for part in (registry, prefix, name) if part)


def image_ref(name: str, version: str, *, variant: str = "", digest: str = "",
              registry: str = REGISTRY, prefix: str = PREFIX) -> str:
    """The reference of one kubetune image; a digest (sha256:...) wins over the tag."""
    repo = repository(name, registry=registry, prefix=prefix)
    if digest:
        if not re.fullmatch(DIGEST_PATTERN, digest):
            raise ValueError(f"image digest {digest!r}: expected sha256: and 64 hex digits")
        return f"{repo}@{digest}"
    tag = tag_for(version)
    return f"{repo}:{tag}-{variant}" if variant else f"{repo}:{tag}"


def target_ref(item: ImageTarget, version: str, *, registry: str = REGISTRY, prefix: str = PREFIX) -> str:
    return image_ref(item.name, version, variant=item.variant, registry=registry, prefix=prefix)


def trainer_ref(version: str, variant: str = "gpu", **kwargs: str) -> str:
    if variant not in TRAINER_VARIANTS:
        raise ValueError(f"trainer variant {variant!r}: expected one of {', '.join(TRAINER_VARIANTS)}")
    return image_ref("trainer", version, variant=TRAINER_VARIANTS[variant], **kwargs)


def is_image_reference(ref: str) -> bool:
    return bool(_REFERENCE.fullmatch(ref))


def follows_scheme(ref: str, version: str, *, registry: str = REGISTRY, prefix: str = PREFIX,
                   external: tuple[str, ...] = (VLLM_IMAGE,)) -> bool:
    """Whether `ref` is one of kubetune's images of this version (by tag, or by any digest),
    or one of the pinned third-party images in `external`."""
    if ref in external:
        return True
    match = _SPLIT.fullmatch(ref)
    if not match or not is_image_reference(ref):
        return False
    names = {repository(t.name, registry=registry, prefix=prefix) for t in TARGETS}
    if match["repository"] not in names:
        return False
    if match["digest"]:
        return True
    tags = {tag_for(version)} | {f"{tag_for(version)}-{t.variant}" for t in TARGETS if t.variant}
    return match["tag"] in tags


def default_version() -> str:
    """The installed kubetune's version (the images' tag)."""
    from kubetune import __version__

    return __version__
