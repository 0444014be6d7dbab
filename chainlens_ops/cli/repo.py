"""`chainlens-ops repo`: create a repository, show it, encrypt it, rotate its key."""

from __future__ import annotations

from typing import Annotated

import typer

from chainlens_ops.cli.common import (
    DbOption,
    JsonOption,
    console,
    err_console,
    print_json,
    repository_for,
)
from chainlens_ops.cli.wal import RepoOption
from chainlens_ops.repository.admin import (
    KeyChange,
    encrypt_repository,
    init_repository,
    key_source,
    repository_info,
    rotate_key,
)
from chainlens_ops.settings.keys import format_bytes

app = typer.Typer(
    help="The repository itself: init, info, encryption and its key.",
    no_args_is_help=True,
)

KeyFileOption = Annotated[
    str | None,
    typer.Option(
        "--key-file",
        help="Key file: 32 random bytes, mode 0600 (created if missing). "
        "Default: CHAINLENS_REPO_KEY_FILE or [repository] key_file.",
        show_default=False,
    ),
]
KmsOption = Annotated[
    str | None,
    typer.Option(
        "--kms-key-id", help="AWS KMS key (ARN) that wraps the data key.", show_default=False
    ),
]


def _report(change: KeyChange) -> None:
    if change.created_key_file:
        err_console.print(
            f"created key file {change.created_key_file}: keep a copy away from the "
            "repository; without it the backups cannot be read",
            markup=False,
        )
    line = f"{change.repo}: {change.action}, key: {change.key_source}"
    if change.rewritten or change.already_sealed:
        line += f"; sealed {change.rewritten} objects in place ({change.already_sealed} were)"
    if change.plain_objects:
        line += "; objects stored before encryption stay plaintext (--rewrite seals them)"
    console.print(line, markup=False)


def _show(change: KeyChange, json_output: bool) -> None:
    if json_output:
        print_json(change)
    else:
        _report(change)


@app.command("init")
def init_command(
    ctx: typer.Context,
    db: DbOption = None,
    repo: RepoOption = None,
    encrypt: Annotated[
        bool, typer.Option("--encrypt", help="Encrypt every object (AES-256-GCM).")
    ] = False,
    key_file: KeyFileOption = None,
    kms_key_id: KmsOption = None,
    json_output: JsonOption = False,
) -> None:
    """Create a repository (optionally encrypted) before anything is stored in it."""
    repository = repository_for(ctx, db.value if db else None, repo)
    source = None
    if encrypt or key_file or kms_key_id:
        source = key_source(repository, key_file=key_file, kms_key_id=kms_key_id, option="init")
    change = init_repository(repository, encrypt=encrypt, source=source)
    _show(change, json_output)


@app.command("info")
def info_command(
    ctx: typer.Context,
    db: DbOption = None,
    repo: RepoOption = None,
    json_output: JsonOption = False,
) -> None:
    """Format, encryption, key source, last rotation, cluster, sizes (no key needed)."""
    info = repository_info(repository_for(ctx, db.value if db else None, repo))
    if json_output:
        print_json(info)
        return
    if not info.initialized:
        console.print(f"{info.repo}: empty (no marker yet)", markup=False)
        return
    rows = [
        ("repository", info.repo),
        ("format", str(info.format)),
        ("encryption", info.encryption or "none"),
        ("key", info.key_source or "-"),
        ("key rotated", info.key_rotated_at or "-"),
        ("cluster", info.system_identifier or "not bound yet"),
        ("created", info.created_at or "-"),
    ]
    if info.plain_objects:
        rows.append(("plaintext", "objects from before encryption may remain"))
    if info.encryption and not info.marker_authenticated:
        rows.append(("marker", "not authenticated (format 2): `repo rotate-key` does it"))
    for name, usage in info.sizes.items():
        rows.append((name, f"{usage.objects} objects, {format_bytes(usage.bytes)}"))
    for name, value in rows:
        console.print(f"{name:<12} {value}", markup=False)


@app.command("rotate-key")
def rotate_key_command(
    ctx: typer.Context,
    db: DbOption = None,
    repo: RepoOption = None,
    new_key_file: Annotated[
        str | None,
        typer.Option(
            "--new-key-file", help="The new key file (created if missing).", show_default=False
        ),
    ] = None,
    new_kms_key_id: Annotated[
        str | None,
        typer.Option("--new-kms-key-id", help="The new AWS KMS key (ARN).", show_default=False),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Re-wrap the data key with a new key; no data object is rewritten."""
    repository = repository_for(ctx, db.value if db else None, repo)
    if not new_key_file and not new_kms_key_id:
        from chainlens_ops.core.errors import UsageError

        raise UsageError("rotate-key needs --new-key-file FILE or --new-kms-key-id ARN")
    source = key_source(
        repository, key_file=new_key_file, kms_key_id=new_kms_key_id, option="rotate-key"
    )
    change = rotate_key(repository, source)
    _show(change, json_output)


@app.command("encrypt")
def encrypt_command(
    ctx: typer.Context,
    db: DbOption = None,
    repo: RepoOption = None,
    key_file: KeyFileOption = None,
    kms_key_id: KmsOption = None,
    rewrite: Annotated[
        bool,
        typer.Option("--rewrite", help="Also seal the objects stored before (resumable)."),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Turn encryption on for a plain repository (new objects from now on)."""
    repository = repository_for(ctx, db.value if db else None, repo)
    if key_file:
        repository.key_file = key_file  # the key that opens an already encrypted one
    marker = repository.stored_marker(fresh=True)
    source = None
    if marker is None or not marker.encrypted:
        source = key_source(repository, key_file=key_file, kms_key_id=kms_key_id, option="encrypt")
    change = encrypt_repository(repository, source, rewrite=rewrite)
    _show(change, json_output)
