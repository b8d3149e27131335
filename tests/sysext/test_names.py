"""Image file names and the SHA256SUMS format (pure tables)."""

from __future__ import annotations

import pytest

from nebula.errors import InvalidInputError
from nebula.sysext.names import ImageName, parse_image_name, render_index

H1, H2 = "a" * 64, "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("file_name", "ext", "expected"),
    [
        ("kubernetes-v1.31.1-x86-64.raw", None, ("kubernetes", "v1.31.1", "x86-64")),
        ("kubernetes-v1.32.2-arm64.raw", None, ("kubernetes", "v1.32.2", "arm64")),
        ("docker-compose-2.34.0-x86-64.raw", None, ("docker-compose", "2.34.0", "x86-64")),
        ("tailscale-1.0.0-rc1-arm64.raw", None, ("tailscale", "1.0.0-rc1", "arm64")),
        (
            "nvidia-drivers-535-open-1.0-x86-64.raw",
            "nvidia-drivers-535-open",
            ("nvidia-drivers-535-open", "1.0", "x86-64"),
        ),
    ],
)
def test_image_names_parse(file_name: str, ext: str | None, expected: tuple[str, ...]) -> None:
    image = parse_image_name(file_name, ext)
    assert (image.name, image.version, image.arch) == expected
    assert image.file_name == file_name  # the name round-trips: hosts fetch it by this name


@pytest.mark.parametrize(
    "file_name",
    [
        "kubernetes-v1.31.1-amd64.raw",  # Nebula's arch name, not systemd's %a
        "kubernetes-v1.31.1-x86_64.raw",
        "kubernetes-v1.31.1.raw",  # no arch
        "kubernetes-v1.31.1-x86-64.img",  # not .raw
        "kubernetes-x86-64.raw",  # no version
        "-v1.31.1-x86-64.raw",  # no name
        "Kubernetes-v1.31.1-x86-64.raw",  # upper case name
        "../kubernetes-v1.31.1-x86-64.raw",
        "kubernetes-v1.31/1-x86-64.raw",
        "kubernetes-v1.31 1-x86-64.raw",
        "",
    ],
)
def test_bad_image_names_refused_naming_the_form(file_name: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_image_name(file_name)
    message = str(caught.value)
    assert "<ext>-<version>-<arch>.raw" in message and "\n" not in message


def test_ext_must_prefix_the_name() -> None:
    with pytest.raises(InvalidInputError, match="does not start with docker-"):
        parse_image_name("kubernetes-v1.31.1-x86-64.raw", "docker")


def test_index_is_sha256sum_output() -> None:
    # Sorted by file name, two spaces, a newline after every line including the last.
    text = render_index(
        [
            (H2, ImageName("k", "2", "x86-64").file_name),
            (H1, ImageName("k", "1", "arm64").file_name),
        ]
    )
    assert text == f"{H1}  k-1-arm64.raw\n{H2}  k-2-x86-64.raw\n"
    assert render_index([]) == ""


@pytest.mark.parametrize(
    "entry", [("A" * 64, "k-1-arm64.raw"), ("a" * 63, "k-1-arm64.raw"), (H1, "../x.raw")]
)
def test_index_refuses_what_sysupdate_would_reject(entry: tuple[str, str]) -> None:
    with pytest.raises(ValueError):
        render_index([entry])
