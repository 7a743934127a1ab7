"""``maas keys ...``: manage API keys: in the local registry, or a server's with ``--url``.

Remote mode goes through the SDK (the server pushes a revocation to its workers at once);
``rotate-master`` and the edge signing key work on the registry's machine only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, cast

import typer

from maas import crypto
from maas.cli.backend import open_client
from maas.cli.common import cli_errors, fail, settings_from
from maas.cli.output import out, print_json, table
from maas.client import MaasClient
from maas.client.views import KeyPolicyDict
from maas.config import decode_master_key
from maas.registry.artifacts import open_store
from maas.registry.store import Registry
from maas.security.keys import KeyInfo, KeyPolicy, KeyStore

app = typer.Typer(
    help="Manage API keys (local registry, or a server with --url).", no_args_is_help=True
)


class _LocalKeys:
    """The key operations the commands use, on the local registry."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store

    def create(self, name: str, options: dict[str, Any]) -> tuple[KeyInfo, str]:
        return self.store.create(name, None, KeyPolicy(**options))

    def update(self, key_id: int, options: dict[str, Any]) -> KeyInfo:
        return self.store.update(key_id, options)

    def rotate(self, key_id: int) -> tuple[KeyInfo, str]:
        return self.store.rotate(key_id)

    def list(self) -> list[KeyInfo]:
        return self.store.list()

    def get(self, key_id: int) -> KeyInfo:
        return self.store.get(key_id)

    def revoke(self, key_id: int) -> KeyInfo:
        return self.store.revoke(key_id)


class _RemoteKeys:
    """The same operations on a server's keys, through the SDK."""

    def __init__(self, client: MaasClient) -> None:
        self.client = client

    def create(self, name: str, options: dict[str, Any]) -> tuple[KeyInfo, str]:
        created = self.client.create_key(name, cast(KeyPolicyDict, options))
        return KeyInfo.model_validate(created["info"]), created["key"]

    def update(self, key_id: int, options: dict[str, Any]) -> KeyInfo:
        return KeyInfo.model_validate(self.client.update_key(key_id, cast(KeyPolicyDict, options)))

    def rotate(self, key_id: int) -> tuple[KeyInfo, str]:
        created = self.client.rotate_key(key_id)
        return KeyInfo.model_validate(created["info"]), created["key"]

    def list(self) -> list[KeyInfo]:
        return [KeyInfo.model_validate(k) for k in self.client.list_keys()]

    def get(self, key_id: int) -> KeyInfo:
        return KeyInfo.model_validate(self.client.get_key(key_id))

    def revoke(self, key_id: int) -> KeyInfo:
        return KeyInfo.model_validate(self.client.revoke_key(key_id))


@contextmanager
def _keys(ctx: typer.Context) -> Iterator[_LocalKeys | _RemoteKeys]:
    settings = settings_from(ctx)
    if settings.url:
        with open_client(settings) as client:
            yield _RemoteKeys(client)
        return
    registry = Registry(settings)
    try:
        yield _LocalKeys(KeyStore(registry.db))
    finally:
        registry.close()


def _policy_options(
    scope: list[str] | None,
    model: list[str] | None,
    owner: str | None,
    expires: datetime | None,
    rpm: int | None,
    tpm: int | None,
    monthly_tokens: int | None,
    monthly_requests: int | None,
    pii: str | None,
) -> dict[str, Any]:
    given = {
        "scopes": scope or None,
        "models": model or None,
        "owner": owner,
        "expires_at": expires.replace(tzinfo=expires.tzinfo or UTC) if expires else None,
        "rpm_limit": rpm,
        "tpm_limit": tpm,
        "monthly_token_quota": monthly_tokens,
        "monthly_request_quota": monthly_requests,
        "pii_policy": pii,
    }
    return {k: v for k, v in given.items() if v is not None}


ScopeOpt = Annotated[
    list[str] | None, typer.Option("--scope", "-s", help="admin, deploy, read, infer; repeatable.")
]
ModelOpt = Annotated[
    list[str] | None, typer.Option("--model", "-m", help="Allowed model name or glob; repeatable.")
]
OwnerOpt = Annotated[str | None, typer.Option(help="Person or team the key is for.")]
ExpiresOpt = Annotated[datetime | None, typer.Option(help="Expiry (UTC unless a zone is given).")]
RpmOpt = Annotated[int | None, typer.Option("--rpm", help="Requests per minute.")]
TpmOpt = Annotated[int | None, typer.Option("--tpm", help="Tokens per minute.")]
MonthlyTokensOpt = Annotated[int | None, typer.Option(help="Monthly token quota.")]
MonthlyRequestsOpt = Annotated[int | None, typer.Option(help="Monthly request quota.")]
PiiOpt = Annotated[str | None, typer.Option(help="off, redact, redact:input, redact:output, block")]


@app.command()
@cli_errors
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", "-n")],
    scope: ScopeOpt = None,
    model: ModelOpt = None,
    owner: OwnerOpt = None,
    expires: ExpiresOpt = None,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    monthly_tokens: MonthlyTokensOpt = None,
    monthly_requests: MonthlyRequestsOpt = None,
    pii: PiiOpt = None,
) -> None:
    """Create a key and print it once; only its hash is stored.

    \b
    Examples:
      maas keys create --name team-a --scope infer --model "team-a-*" --rpm 600
      maas keys create --name ci --scope deploy --scope read --pii redact
    """
    options = _policy_options(
        scope, model, owner, expires, rpm, tpm, monthly_tokens, monthly_requests, pii
    )
    with _keys(ctx) as keys:
        info, plaintext = keys.create(name, options)
    out.print(plaintext)
    typer.echo(
        f"created key {info.id} ({info.name}, scopes: {', '.join(info.scopes)}); "
        "it will not be shown again",
        err=True,
    )


@app.command()
@cli_errors
def update(
    ctx: typer.Context,
    key_id: int,
    scope: ScopeOpt = None,
    model: ModelOpt = None,
    owner: OwnerOpt = None,
    expires: ExpiresOpt = None,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    monthly_tokens: MonthlyTokensOpt = None,
    monthly_requests: MonthlyRequestsOpt = None,
    pii: PiiOpt = None,
) -> None:
    """Change a key's policy (its secret stays).

    \b
    Examples:
      maas keys update 2 --rpm 1200 --tpm 200000
      maas keys update 2 --model minilm --model "team-a-*"
    """
    options = _policy_options(
        scope, model, owner, expires, rpm, tpm, monthly_tokens, monthly_requests, pii
    )
    with _keys(ctx) as keys:
        info = keys.update(key_id, options)
    out.print(f"updated key {info.id} ({info.name})")


@app.command()
@cli_errors
def rotate(ctx: typer.Context, key_id: int) -> None:
    """Issue a new secret with the same policy and revoke the old one; prints the secret once.

    \b
    Examples:
      maas keys rotate 2
    """
    with _keys(ctx) as keys:
        info, plaintext = keys.rotate(key_id)
    out.print(plaintext)
    typer.echo(f"key {key_id} rotated: new key {info.id}; the old one is revoked", err=True)


def _stamp(value: datetime | None, none: str = "") -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else none


def _limit(value: int | None) -> str:
    return "-" if value is None else str(value)


def _quota(info: KeyInfo) -> str:
    parts = []
    if info.monthly_request_quota is not None:
        parts.append(f"{info.monthly_request_quota} req")
    if info.monthly_token_quota is not None:
        parts.append(f"{info.monthly_token_quota} tok")
    return ", ".join(parts) or "-"


@app.command("list")
@cli_errors
def list_keys(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List keys with their allowlist and limits (never their secrets).

    \b
    Examples:
      maas keys list
      maas keys list --json
    """
    with _keys(ctx) as store:
        keys = store.list()
    if as_json:
        print_json(keys)
        return
    table(
        None,
        ["id", "name", "prefix", "scopes", "models", "rpm", "tpm", "monthly", "expires", "revoked"],
        [
            [
                k.id,
                k.name,
                k.prefix + "…",
                ",".join(k.scopes),
                ",".join(k.models) or "all",
                _limit(k.rpm_limit),
                _limit(k.tpm_limit),
                _quota(k),
                _stamp(k.expires_at, "never"),
                _stamp(k.revoked_at),
            ]
            for k in keys
        ],
    )


@app.command()
@cli_errors
def show(
    ctx: typer.Context,
    key_id: int,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show one key's whole policy: scopes, allowlist, limits, quotas, PII, expiry, use.

    \b
    Examples:
      maas keys show 2
    """
    with _keys(ctx) as keys:
        info = keys.get(key_id)
    if as_json:
        print_json(info)
        return
    none = "none"
    fields = [
        ("prefix", info.prefix + "…"),
        ("owner", info.owner or "-"),
        ("scopes", ", ".join(info.scopes)),
        ("models", ", ".join(info.models) or "all (no allowlist)"),
        ("requests per minute", info.rpm_limit or none),
        ("tokens per minute", info.tpm_limit or none),
        (
            "monthly requests",
            none if info.monthly_request_quota is None else info.monthly_request_quota,
        ),
        ("monthly tokens", none if info.monthly_token_quota is None else info.monthly_token_quota),
        ("pii policy", info.pii_policy or "server default"),
        ("expires", _stamp(info.expires_at, "never")),
        ("created", _stamp(info.created_at)),
        ("last used", _stamp(info.last_used_at, "never")),
        ("revoked", _stamp(info.revoked_at, "no")),
    ]
    if info.rotated_from is not None:
        fields.append(("rotated from", f"key {info.rotated_from}"))
    out.print(f"[bold]key {info.id}[/bold]  {info.name}")
    for label, value in fields:
        out.print(f"{label}: {value}", markup=False)


@app.command()
@cli_errors
def revoke(ctx: typer.Context, key_id: int) -> None:
    """Revoke a key; it fails from the next request on.

    \b
    Examples:
      maas keys revoke 2
    """
    with _keys(ctx) as keys:
        info = keys.revoke(key_id)
    out.print(f"revoked key {info.id} ({info.name})")


@app.command("rotate-master")
@cli_errors
def rotate_master(
    ctx: typer.Context,
    new_key_file: Annotated[
        Path,
        typer.Option(
            "--new-key-file",
            help="File holding the new master key (32 bytes as base64 or hex).",
            show_default=False,
        ),
    ],
) -> None:
    """Re-wrap every blob's data key under a new master key; blobs are not rewritten.

    The current key comes from MAAS_MASTER_KEY or MAAS_MASTER_KEY_FILE. Stop
    servers that write to this store first, and restart them with the new key.

    \b
    Examples:
      MAAS_MASTER_KEY_FILE=master.key maas keys rotate-master \\
          --new-key-file master-2.key
    """
    settings = settings_from(ctx)
    old_key = settings.master_key_bytes
    if old_key is None:
        raise fail(
            "no current master key: set MAAS_MASTER_KEY or MAAS_MASTER_KEY_FILE to the key "
            "the blobs are encrypted with"
        )
    try:
        new_key = decode_master_key(
            new_key_file.read_text(encoding="ascii"), source=f"--new-key-file {new_key_file}"
        )
    except UnicodeDecodeError:
        raise fail(f"--new-key-file {new_key_file} is not ASCII text") from None
    except ValueError as exc:
        raise fail(str(exc)) from None
    result = open_store(settings, master_key=old_key).rewrap_keys(new_key)
    out.print(f"re-wrapped {result.rewrapped} blob(s)")
    typer.echo(
        f"{result.already} already under the new key, {result.plaintext} plaintext blob(s) "
        f"left as they are; new master key id {crypto.key_id(new_key)}. Set "
        f"MAAS_MASTER_KEY_FILE={new_key_file} before the next start.",
        err=True,
    )
