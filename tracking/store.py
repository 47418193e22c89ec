"""Where runs go: the default local store under ./mlruns, or a tracking server; experiments and connection checks."""

from __future__ import annotations

import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from landscape_core.errors import UsageError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = [
    "EXPERIMENT_KIND_TAG",
    "TRAINING_KIND",
    "StoreError",
    "TrackingStore",
    "check_tracking_uri",
    "default_tracking_uri",
    "redact",
]

DEFAULT_ROOT = Path("mlruns")
#: Tracking URI schemes MLflow stores and servers answer (database schemes with an optional ``+driver``).
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")
#: Schemes of a database MLflow writes to directly: reachable is checked by connecting.
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
#: The experiment tag MLflow 3 keeps an experiment's kind in, and the kind of a model-training experiment: the UI's
#: ``ExperimentKind.CUSTOM_MODEL_DEVELOPMENT`` (shown as "Machine learning"; the GenAI kind is ``genai_development``).
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


class StoreError(UsageError):
    """The tracking store cannot be used (not writable, not reachable, not there): bad input, one line, exit 2."""


def default_tracking_uri(root: str | Path = DEFAULT_ROOT) -> str:
    """``sqlite:///<root>/mlflow.db`` (the default local store of docs/architecture.md)."""
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def redact(uri: str) -> str:
    """The URI with any password replaced by ``***`` (for printing; credentials are never logged)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def _scheme(uri: str) -> str:
    return uri.partition("://")[0].partition("+")[0].lower() if "://" in uri else uri.partition(":")[0].lower()


def check_tracking_uri(uri: str | None) -> None:
    """``--tracking-uri``: None (the local store) or a URI of a scheme MLflow answers; a StoreError otherwise
    (``htp://``, a bare path, ``sqlite://x.db`` with too few slashes). Writes and connects to nothing."""
    if uri is None:
        return
    scheme = _scheme(uri)
    if ":" not in uri or scheme not in TRACKING_SCHEMES:
        raise StoreError(
            f"Expected `--tracking-uri` a URI of scheme {', '.join(TRACKING_SCHEMES)} (e.g. http://host:5000), got "
            f"{redact(uri)!r}; for a local store pass --root DIR"
        )
    if scheme == "sqlite" and not uri.startswith("sqlite:///"):
        raise StoreError(f"Expected `--tracking-uri` sqlite:///PATH (three slashes), got {redact(uri)!r}")
    if scheme in ("http", "https") and not urlsplit(uri).hostname:
        raise StoreError(f"Expected `--tracking-uri` {scheme}://HOST[:PORT], got {redact(uri)!r}")


@dataclass(frozen=True)
class TrackingStore:
    """An MLflow tracking URI and, for local stores, the artifact root next to it."""

    tracking_uri: str
    artifact_root: str | None = None

    @classmethod
    def resolve(cls, tracking_uri: str | None = None, root: str | Path = DEFAULT_ROOT) -> TrackingStore:
        """The store for ``--tracking-uri`` (a server or any MLflow URI) or, when None, the local default."""
        if tracking_uri:
            return cls(tracking_uri)
        root = Path(root)
        return cls(default_tracking_uri(root), (root.resolve() / "artifacts").as_uri())

    def validate(self) -> None:
        """Raise a one-line StoreError when the store cannot be written or reached; writes nothing."""
        check_tracking_uri(self.tracking_uri)
        if _scheme(self.tracking_uri) in DATABASE_SCHEMES:
            self._connect()
        elif self.tracking_uri.startswith("sqlite:///"):
            directory = Path(self.tracking_uri.removeprefix("sqlite:///")).parent
            existing = directory
            while not existing.exists() and existing != existing.parent:
                existing = existing.parent
            if not existing.is_dir():
                raise StoreError(f"cannot create the store directory {directory}: {existing} is not a directory")
            if not os.access(existing, os.W_OK | os.X_OK):
                raise StoreError(f"the store directory {existing} is not writable")
        elif self.tracking_uri.startswith(("http://", "https://")):
            try:
                urllib.request.urlopen(self.tracking_uri.rstrip("/") + "/health", timeout=5).read()
            except OSError as error:
                raise StoreError(f"the MLflow server {redact(self.tracking_uri)} is not reachable: {error}") from None

    def _connect(self) -> None:
        """Connect to a database store once (5 s at most), or raise a one-line StoreError."""
        import sqlalchemy  # only database stores need it; MLflow depends on it

        connect_args = {"connect_timeout": 5} if _scheme(self.tracking_uri) == "postgresql" else {}
        try:
            engine = sqlalchemy.create_engine(self.tracking_uri, connect_args=connect_args)
            try:
                with engine.connect():
                    pass
            finally:
                engine.dispose()
        except Exception as error:  # a missing driver, a refused connection, bad credentials: one line each
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            password = urlsplit(self.tracking_uri).password
            reason = reason.replace(password, "***") if password else reason
            raise StoreError(f"the MLflow store {redact(self.tracking_uri)} is not reachable: {reason}") from None

    def check(self) -> None:
        """``validate``, then create the local store directory; a one-line StoreError when that fails."""
        self.validate()
        if self.tracking_uri.startswith("sqlite:///"):
            directory = Path(self.tracking_uri.removeprefix("sqlite:///")).parent
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StoreError(f"cannot create the store directory {directory}: {error.strerror}") from None
            if not os.access(directory, os.W_OK):
                raise StoreError(f"the store directory {directory} is not writable")

    def client(self) -> MlflowClient:
        from mlflow.tracking import MlflowClient  # imported on first use: the CLIs check their input without MLflow

        return MlflowClient(tracking_uri=self.tracking_uri)

    def experiment_id(self, name: str) -> str:
        """The id of experiment ``name``, created (with the store's artifact root) when absent.

        The experiment is tagged as a model-training one (``EXPERIMENT_KIND_TAG`` = ``TRAINING_KIND``), and so is an
        existing one that has no kind yet; a kind someone chose (in the UI, say) is left alone.
        """
        client = self.client()
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            location = f"{self.artifact_root}/{name}" if self.artifact_root else None
            try:
                tags = {EXPERIMENT_KIND_TAG: TRAINING_KIND}
                return client.create_experiment(name, artifact_location=location, tags=tags)
            except Exception:  # another worker created it first
                experiment = client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
        return experiment.experiment_id
