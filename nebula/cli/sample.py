"""`nebula sample-payload`: a key and a payload signed with it, to try a server out offline.

Real hosts only accept payloads signed with their own key (Flatcar's, for official images), so
these files are for a lab: start the server with `--trusted-key DIR/sample-key.pub.pem`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import click
from cryptography.hazmat.primitives import serialization

from nebula import crau


@click.command("sample-payload")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("sample"),
    show_default=True,
)
@click.option("--size", type=int, default=1 << 20, show_default=True, help="Data bytes")
@click.option(
    "--extension",
    "extensions",
    multiple=True,
    help="Also write an extension payload of this name, e.g. oem-azure.gz",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace a key already in OUT (payloads signed with it then fail to verify)",
)
def sample_payload(out_dir: Path, size: int, extensions: tuple[str, ...], force: bool) -> None:
    """Write a signing key pair and payloads signed with it into OUT.

    \b
    Example:
      nebula sample-payload --out ./sample --extension oem-azure.gz
    """
    private = out_dir / "sample-key.pem"
    public = out_dir / "sample-key.pub.pem"
    # A server started with --trusted-key on the old public key would refuse everything signed
    # with a new one, and payloads signed with the old key would no longer match the files here.
    existing = [p for p in (private, public) if p.exists()]
    if existing and not force:
        raise click.ClickException(
            f"{existing[0]} exists: a new key would not verify payloads signed with it "
            "(and a server trusting it would refuse the new ones); "
            "use another --out, or --force to replace it"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    key = crau.make_rsa_key()
    # Created owner-only: a private key is never readable by others, not even for a moment.
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    private.chmod(0o600)  # a replaced (--force) file keeps its old mode otherwise
    public.write_bytes(crau.public_pem(key))
    for name in ("flatcar_production_update.gz", *extensions):
        data = os.urandom(size)
        path = out_dir / name
        with path.open("wb") as f:
            crau.write_payload(
                f,
                [(2, key)],
                data=[data],
                data_size=len(data),
                data_hash=hashlib.sha256(data).digest(),
            )
        click.echo(f"wrote {path} ({path.stat().st_size} bytes)")
    click.echo(f"trust it with: nebula serve --trusted-key {public}")
