"""One typed settings object: defaults < config file < DOCKYARD_* environment < CLI flags."""

from __future__ import annotations

import enum
import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, SerializationInfo, field_serializer, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from dockyard.tiers.table import Sku, tier_table

#: ACR's private endpoints, here: loopback, RFC 1918 and IPv6 unique local addresses.
DEFAULT_PRIVATE_NETWORKS = (
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
)


class LogLevel(enum.StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class LogFormat(enum.StrEnum):
    text = "text"
    json = "json"


class TlsMode(enum.StrEnum):
    """How `dockyard serve` speaks TLS (see docs/tls.md)."""

    off = "off"
    files = "files"
    self_signed = "self-signed"


#: Serialisation context key: dump secrets in clear (only for handing settings to a child process).
_REVEAL_SECRETS = "reveal_secrets"


#: Settings that no longer exist and what took their place (a clear error instead of "extra input").
REPLACED_SETTINGS = {
    "webhook_limit": "the tier table sets it; override with [tiers.<SKU>] webhooks = N (docs/tiers.md)",
    "storage_limit_bytes": "the tier table sets it; override with [tiers.<SKU>] storage_bytes = N",
}


class Settings(BaseSettings):
    """Everything a Dockyard process needs to know, read once at start-up."""

    model_config = SettingsConfigDict(env_prefix="DOCKYARD_", extra="forbid", validate_default=True)

    data_dir: Path = Field(Path("dockyard-data"), description="Folder for the embedded database and blobs.")
    host: str = Field("127.0.0.1", description="Address `dockyard serve` listens on.")
    port: int = Field(5000, ge=0, le=65535, description="Port `dockyard serve` listens on.")
    database_url: str = Field(
        "",
        description="SQLAlchemy URL; empty: SQLite at <data_dir>/dockyard.db; postgresql://… to scale out.",
    )
    storage_path: Path | None = Field(
        None, description="Filesystem blob store root; default <data_dir>/storage."
    )
    storage_redirect: bool = Field(
        False,
        description="Serve blob GETs with a 307 to a short-lived store URL when the store can sign one.",
    )
    storage: str | None = Field(
        None,
        description="Blob store: s3://bucket/prefix for S3-compatible object storage (docs/storage.md), "
        "azure://container/prefix for Azure Blob Storage (docs/storage-azure.md); a folder or file:// URL "
        "sets storage_path.",
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3 endpoint, e.g. http://seaweedfs:8333; default: AWS_ENDPOINT_URL, else AWS."
    )
    s3_region: str | None = Field(None, description="S3 region; default: AWS_REGION, else us-east-1.")
    s3_access_key_id: str | None = Field(
        None, description="S3 access key; default: AWS_ACCESS_KEY_ID (or boto3's other sources)."
    )
    s3_secret_access_key: SecretStr | None = Field(
        None, description="S3 secret key; default: AWS_SECRET_ACCESS_KEY (or boto3's other sources)."
    )
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="S3 bucket addressing; auto: path-style with an endpoint URL, else virtual-host."
    )
    s3_part_size: int = Field(
        8 * 1024 * 1024,
        ge=5 * 1024 * 1024,
        le=5 * 1024**3,
        description="Bytes per S3 multipart part (buffered in memory per upload request; grows after 1,000).",
    )
    s3_max_connections: int = Field(
        64, ge=1, description="S3 connections held per process (concurrent requests to the store)."
    )
    azure_connection_string: str = Field(
        "", description="Azure Storage connection string; default: AZURE_STORAGE_CONNECTION_STRING."
    )
    azure_account: str = Field("", description="Azure Storage account name; default: AZURE_STORAGE_ACCOUNT.")
    azure_key: str = Field("", description="Azure Storage account key; default: AZURE_STORAGE_KEY.")
    azure_endpoint: str = Field(
        "",
        description="Blob endpoint override (Azurite, sovereign clouds); default: "
        "AZURE_STORAGE_BLOB_ENDPOINT "
        "or https://<account>.blob.core.windows.net.",
    )
    migrate_on_start: bool = Field(True, description="Apply database migrations when the server starts.")
    log_level: LogLevel = Field(LogLevel.info, description="Log verbosity.")
    log_format: LogFormat = Field(
        LogFormat.text, description="text, or json: one JSON object per line (app, server and access logs)."
    )
    access_log: bool = Field(True, description="Log one line per request.")
    metrics_enabled: bool = Field(
        True, description="Count requests and serve Prometheus metrics at /metrics."
    )
    metrics_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_PRIVATE_NETWORKS),
        description="CIDRs that may read /metrics without credentials (others need registry/read); "
        "default loopback + private ranges, comma-separated in env.",
    )
    metrics_state_seconds: float = Field(
        5.0,
        ge=0,
        description="How long a scrape's database-derived state (storage used, backlogs) is reused, "
        "so a scrape flood costs one read per window.",
    )
    metrics_dir: Path | None = Field(
        None,
        description="Where worker processes share metric values; `dockyard serve` sets a fresh one "
        "in /dev/shm (never the data disk).",
    )
    upload_expiry_seconds: int = Field(
        24 * 3600, ge=60, description="Upload sessions idle this long are cancelled and their data removed."
    )
    upload_lease_seconds: int = Field(
        30, ge=5, description="How long one request may hold an upload session while it streams a chunk."
    )
    catalog_page_size: int = Field(1000, ge=1, description="Default and maximum page size of /v2/_catalog.")
    content_cache_entries: int = Field(
        20_000,
        ge=0,
        description="Manifests, blob lookups and tag-list versions each process caches (kept true by "
        "LISTEN/NOTIFY on PostgreSQL, PRAGMA data_version on SQLite); 0 turns the cache off.",
    )
    small_blob_cache_bytes: int = Field(
        8 * 1024 * 1024,
        ge=0,
        description="Memory each process keeps for the bytes of small blobs (64 KiB or less: image "
        "configs, mostly) it stored or streamed from object storage, so a hot one costs no store "
        "request; 0 turns it off.",
    )
    immutable_tags: bool = Field(
        False,
        description="Write-once tags in every repository without a policy of its own "
        "(`dockyard repository immutability set`).",
    )
    immutable_tags_exempt: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Tags (fnmatch patterns, e.g. latest) exempt from the default write-once policy; "
        "comma-separated in env.",
    )
    max_connections: int = Field(
        8192,
        ge=16,
        description="Connections one worker holds at once (more wait in the listen backlog).",
    )
    header_timeout_seconds: int = Field(
        10, ge=1, le=300, description="A client must send a request's headers within this many seconds."
    )
    shutdown_timeout_seconds: int = Field(
        30, ge=1, description="On SIGTERM, how long in-flight requests may finish before they are cut."
    )
    registry_name: str = Field(
        "dockyard",
        pattern=r"^[a-zA-Z0-9][a-zA-Z0-9.-]{0,62}$",
        description="The registry's name: the admin user name and the token service (JWT audience).",
    )
    admin_username: str = Field("", description="Admin user name at first start; default: the registry name.")
    admin_password: str = Field(
        "",
        description="Admin password at first start (automation); enables the admin user. Default: generated.",
    )
    access_token_seconds: int = Field(300, ge=30, description="Lifetime of access tokens from /oauth2/token.")
    refresh_token_seconds: int = Field(
        3 * 3600,
        ge=600,
        description="Lifetime of refresh tokens (docker login with the null GUID, /oauth2/exchange).",
    )
    refresh_chain_seconds: int = Field(
        24 * 3600,
        ge=600,
        description="How long refresh tokens can be re-exchanged for new ones after the credential was last "
        "checked; then the identity must sign in again.",
    )
    audit_retention_days: int = Field(90, ge=1, description="Audit records older than this are deleted.")
    audit_window_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Sign-in failures and token grants are counted in memory and written as one audit record "
        "per client and window.",
    )
    login_failures_per_client: int = Field(
        10, ge=1, description="Failed sign-ins one client address may make in a burst before it gets 429s."
    )
    login_failures_per_user: int = Field(
        20, ge=1, description="Failed sign-ins against one user name in a burst before its sign-ins get 429s."
    )
    login_failure_refill_seconds: float = Field(
        6.0,
        gt=0,
        description="After a burst, one more failed sign-in is allowed per client every this many seconds "
        "(per user name: every twice this).",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDRs of reverse proxies whose X-Forwarded-For is believed (comma-separated in env).",
    )
    private_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_PRIVATE_NETWORKS),
        description="CIDRs the network rules always allow (ACR's private endpoints); loopback + RFC 1918.",
    )
    run_worker: bool = Field(
        True,
        description="Run the job runtime (jobs, event consumers such as webhooks, schedules) in "
        "`dockyard serve`; turn off when `dockyard worker` runs it.",
    )
    job_poll_seconds: float = Field(
        0.5,
        gt=0,
        description="How often the job runtime looks for other processes' events, jobs and schedules.",
    )
    job_idle_poll_seconds: float = Field(
        4.0,
        gt=0,
        description="The longest an idle job runtime waits between looks (its wait doubles from "
        "job_poll_seconds while rounds find nothing). New work wakes it at once: from this process, "
        "from any on PostgreSQL (LISTEN), and on SQLite once a commit shows (checked every "
        "job_poll_seconds).",
    )
    job_concurrency: int = Field(4, ge=1, description="Jobs run at once per process.")
    gc_grace_seconds: int = Field(
        3600,
        ge=0,
        description="Garbage collection leaves alone anything newer than this (links, blobs, store objects).",
    )
    gc_interval_seconds: int = Field(
        3600, ge=0, description="How often garbage collection runs, once per registry (0: never by itself)."
    )
    sku: str = Field(
        "Premium",
        description="A new registry's tier (Basic, Standard, Premium), changed by `dockyard update --sku`.",
    )
    tiers: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Overrides of the tier table, e.g. [tiers.Premium] webhooks = 1000 (-1: unlimited).",
    )
    rate_limits_enabled: bool = Field(
        True, description="Enforce the tier's request rates (429 TOOMANYREQUESTS with Retry-After)."
    )
    cache_ttl_seconds: float = Field(
        300.0,
        ge=0,
        description="A tag cached by a cache rule is served without asking its upstream for this long; "
        "then one HEAD upstream confirms or moves it (docs/cache.md).",
    )
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, le=120, description="Time allowed for one delivery attempt."
    )
    webhook_retry_window_seconds: float = Field(
        6 * 3600, ge=0, description="How long a failing delivery is retried before it is dead-lettered."
    )
    webhook_retry_base_seconds: float = Field(
        2.0, gt=0, description="First retry delay; it doubles each attempt (with jitter) up to the maximum."
    )
    webhook_retry_max_seconds: float = Field(300.0, gt=0, description="Longest delay between two attempts.")
    webhook_poll_seconds: float = Field(
        0.5, gt=0, description="How often the worker looks for due deliveries and other processes' events."
    )
    webhook_concurrency: int = Field(
        32, ge=1, description="Deliveries in flight per process (2 per webhook)."
    )
    event_retention_days: int = Field(90, ge=1, description="Repository events older than this are deleted.")
    webhook_allowed_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDRs webhooks may be sent to although they are loopback, link-local, cloud metadata "
        "or unspecified addresses (comma-separated in env).",
    )
    upstream_allowed_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDRs imports and the pull-through cache may reach although they are loopback, "
        "link-local, cloud metadata or unspecified addresses (comma-separated in env).",
    )
    insecure_upstreams: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Upstream registries (host or host:port) reached over plain HTTP, like docker's "
        "insecure-registries (comma-separated in env).",
    )
    upstream_ca_file: Path | None = Field(
        None, description="PEM CA certificates trusted for upstream registries, besides the system's."
    )
    upstream_timeout_seconds: float = Field(
        30.0, gt=0, le=600, description="Time allowed to connect to an upstream and between two reads."
    )
    builds_enabled: bool = Field(
        True,
        description="Run build tasks in this process's job runtime (buildah; podman + runc for cmd steps).",
    )
    builds_dir: Path | None = Field(
        None,
        description="Where runs keep their context and private container store; default <data_dir>/builds.",
    )
    builds_registry: str | None = Field(
        None,
        description="host:port builders reach this registry at ({{.Run.Registry}}); "
        "default from host and port (127.0.0.1 for an unspecified address).",
    )
    builds_concurrency: int = Field(2, ge=1, le=64, description="Runs running at once in the whole registry.")
    builds_source_max_bytes: int = Field(
        512 * 1024 * 1024,
        ge=1024,
        description="Largest uploaded build context (POST /api/v1/builds/sources).",
    )
    builds_context_max_bytes: int = Field(
        2 * 1024**3, ge=1024, description="Largest context a run unpacks or clones (bytes on disk)."
    )
    builds_source_retention_hours: int = Field(
        24, ge=1, description="Uploaded build contexts are kept this long, then collected."
    )
    builds_log_retention_days: int = Field(
        30, ge=1, description="Finished runs and their logs older than this are deleted."
    )
    builds_heartbeat_seconds: float = Field(
        10.0, gt=0, le=300, description="How often a running run proves its worker alive; 3 missed = Error."
    )
    builds_base_poll_seconds: int = Field(
        600, ge=10, description="How often base images on other registries are checked for a new digest."
    )
    builds_local_git_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Folders under which a task's context may be a local git repository path "
        "(comma-separated in env); empty: local paths are refused.",
    )
    builds_network: Literal["none", "host"] = Field(
        "none", description="Network of cmd-step containers: none, or the worker's own (host)."
    )
    webhook_log_retention_days: int = Field(
        30, ge=1, description="Finished webhook deliveries (and their attempts) older than this are deleted."
    )
    db_pool_size: int = Field(
        16,
        ge=1,
        description="Database connections held per process (SQLite: the loop keeps 2; inline writes need 4).",
    )

    # -- TLS for `dockyard serve` (docs/tls.md); checked and applied by dockyard/tls.py ------------
    tls_mode: TlsMode | None = Field(
        None,
        description="off, files or self-signed; default: files when tls_cert/tls_key are set, else off.",
    )
    tls_cert: Path | None = Field(None, description="PEM certificate (chain) to serve HTTPS with.")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert (not encrypted).")
    tls_san: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="More DNS names / IP addresses for the self-signed certificate (comma-separated in env).",
    )
    insecure_http: bool = Field(
        False, description="Serve plain HTTP on a non-loopback address (e.g. behind a TLS-terminating proxy)."
    )

    @field_validator("tls_san", mode="before")
    @classmethod
    def _tls_san_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("tls_san")
    @classmethod
    def _tls_san_names(cls, value: list[str]) -> list[str]:
        label = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
        names = []
        for item in value:
            name = item.strip().lower().rstrip(".")
            try:
                address = ipaddress.ip_address(name.strip("[]"))
            except ValueError:
                if len(name) > 253 or not re.fullmatch(rf"(?:\*\.)?{label}(?:\.{label})*", name):
                    raise ValueError(f"tls_san: {item!r} is neither a DNS name nor an IP address") from None
            else:
                if getattr(address, "scope_id", None):
                    raise ValueError(f"tls_san: {item!r}: a certificate cannot name a scoped IPv6 address")
                name = str(address)
            if name not in names:
                names.append(name)
        return names

    @field_validator(
        "trusted_proxies",
        "private_networks",
        "webhook_allowed_networks",
        "metrics_networks",
        "immutable_tags_exempt",
        "upstream_allowed_networks",
        "insecure_upstreams",
        "builds_local_git_roots",
        mode="before",
    )
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator(
        "trusted_proxies",
        "private_networks",
        "webhook_allowed_networks",
        "metrics_networks",
        "upstream_allowed_networks",
    )
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)
        return value

    @field_validator("sku")
    @classmethod
    def _sku(cls, value: str) -> str:
        return Sku(value).value

    @field_validator("tiers")
    @classmethod
    def _tiers(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        tier_table(value)  # raises TierTableError (a ValueError) naming the bad entry
        return value

    @field_serializer("s3_secret_access_key", when_used="json")
    def _secret(self, value: SecretStr | None, info: SerializationInfo) -> str | None:
        if value is None:
            return None
        revealed = bool(info.context and info.context.get(_REVEAL_SECRETS))
        return value.get_secret_value() if revealed else str(value)

    def child_json(self) -> str:
        """These settings as JSON for a child process (Settings.model_validate_json), secrets included.

        ``model_dump_json`` masks SecretStr values as ``**********``; a worker given that would
        sign its S3 requests with the mask.
        """
        return self.model_dump_json(context={_REVEAL_SECRETS: True})

    @field_validator("storage")
    @classmethod
    def _storage_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if "://" not in value:
            return value  # a folder
        parts = urlsplit(value)
        if parts.scheme in ("s3", "azure"):
            if not parts.netloc or parts.query or parts.fragment:
                raise ValueError(f"storage: expected {parts.scheme}://bucket/prefix, got {value!r}")
        elif parts.scheme == "file":
            if parts.netloc not in ("", "localhost") or not parts.path:
                raise ValueError(f"storage: expected file:///path, got {value!r}")
        else:
            raise ValueError(f"storage: unsupported scheme {parts.scheme!r} (s3://, azure:// or a folder)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _replaced_settings(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, new in REPLACED_SETTINGS.items():
                if old in data:
                    raise ValueError(f"the {old} setting was replaced: {new}")
        return data

    @model_validator(mode="after")
    def _fill_derived(self) -> Settings:
        if self.storage and not self.storage.startswith(("s3://", "azure://")):
            folder = (
                unquote(urlsplit(self.storage).path) if self.storage.startswith("file://") else self.storage
            )
            self.storage_path = Path(folder)
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'dockyard.db').resolve()}"
        if self.storage_path is None:
            self.storage_path = self.data_dir / "storage"
        if self.builds_dir is None:
            self.builds_dir = self.data_dir / "builds"
        if not self.admin_username:
            self.admin_username = self.registry_name
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from a TOML file, the environment and explicit overrides (None is ignored)."""
    settings_cls = Settings
    if config_file is not None:
        if not config_file.is_file():
            raise FileNotFoundError(f"config file {config_file} not found")
        config = SettingsConfigDict(**{**Settings.model_config, "toml_file": config_file})
        settings_cls = type("FileSettings", (Settings,), {"model_config": config})
    return settings_cls(**{k: v for k, v in overrides.items() if v is not None})
