"""The ``model`` table as a registry of checkpoints, by content (sha256) and by name.

Registering reads the checkpoint (so a file that does not load is refused
before anything is stored), and the sha256 of the file is the key: adding
the same file twice, under any path or name, keeps one row.  A row whose
file has gone (a moved checkpoint, density-db reinstalled elsewhere with its
shipped models) takes the path of the identical file registered again.
Commands that take a model (evaluate, ingest) accept a registered name or a
path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from density_db.database import Database
from density_db.errors import ConfigurationError
from density_db.inference.worker import CheckpointFile, ModelSpec
from density_db.labels import LABEL_RULE, label_rule, recorded_label_rule
from density_db.tables import Model

logger = logging.getLogger(__name__)

_COLUMNS = sa.select(Model.id, Model.name, Model.stage, Model.architecture, Model.sha256, Model.path, Model.metadata_)


@dataclass(frozen=True)
class RegisteredModel:
    """A row of the ``model`` table."""

    id: int
    name: str
    stage: str
    architecture: str
    sha256: str
    path: str | None
    metadata: dict


def register_model(
    database: Database,
    path: Path,
    *,
    name: str | None = None,
    architecture: str | None = None,
    stage: str | None = None,
) -> tuple[RegisteredModel, bool]:
    """Store a checkpoint in the ``model`` table; return its row and whether it was new.

    A checkpoint already registered keeps its row, name and path, unless the
    registered path is no longer a file: then the row points at ``path``,
    which holds the same bytes.

    Raises
    ------
    ConfigurationError
        If the checkpoint does not load, or ``name`` belongs to another checkpoint.
    """
    from density_db.inference.checkpoints import load_checkpoint

    loaded = load_checkpoint(path, architecture=architecture, stage=stage)
    chosen_name = name or f"{loaded.stage}-{loaded.architecture}-{loaded.sha256[:8]}"
    with database.engine.begin() as connection:
        owner = connection.execute(sa.select(Model.sha256).where(Model.name == chosen_name)).scalar()
        if owner is not None and owner != loaded.sha256:
            raise ConfigurationError(f"the model name {chosen_name!r} is taken by another checkpoint; choose --name")
        inserted = connection.execute(
            insert(Model)
            .values(
                name=chosen_name,
                stage=loaded.stage,
                architecture=loaded.architecture,
                sha256=loaded.sha256,
                path=str(Path(path).absolute()),
                metadata_=loaded.metadata,
            )
            .on_conflict_do_nothing(index_elements=["sha256"])
            .returning(Model.id)
        ).scalar()
        if inserted is None:
            _repoint_if_gone(connection, loaded.sha256, Path(path).absolute())
    return find_model(database, loaded.sha256), inserted is not None


def _repoint_if_gone(connection: sa.Connection, sha256: str, path: Path) -> None:
    """Point the row of ``sha256`` at ``path`` if its registered file no longer exists."""
    registered = connection.execute(sa.select(Model.path).where(Model.sha256 == sha256)).scalar()
    if registered is None or not Path(registered).is_file():
        connection.execute(
            sa.update(Model)
            .where(Model.sha256 == sha256, Model.path.is_not_distinct_from(registered))
            .values(path=str(path))
        )


def find_model(database: Database, name_or_sha256: str) -> RegisteredModel:
    """The registered model with this name or sha256.

    Raises
    ------
    ConfigurationError
        If no model has that name or checksum.
    """
    with database.engine.connect() as connection:
        row = connection.execute(
            _COLUMNS.where(sa.or_(Model.name == name_or_sha256, Model.sha256 == name_or_sha256))
        ).first()
    if row is None:
        raise ConfigurationError(
            f"no registered model is named {name_or_sha256!r}; see `density-db models list` or give a checkpoint path"
        )
    return RegisteredModel(*row)


def list_models(database: Database) -> list[RegisteredModel]:
    """Every registered model, oldest first."""
    with database.engine.connect() as connection:
        return [RegisteredModel(*row) for row in connection.execute(_COLUMNS.order_by(Model.id))]


DEMO_MODEL = "demo"
"""What ``--classifier`` and ``--regressor`` take for the models shipped with density-db."""


def resolve_model(
    database: Database, name_or_path: str, *, stage: str, architecture: str | None = None
) -> RegisteredModel:
    """The registered model a command-line argument means, registering a checkpoint file on first use.

    ``name_or_path`` is :data:`DEMO_MODEL` (the shipped model of ``stage``,
    registered as ``demo-<stage>``), a checkpoint path, or the name or
    sha256 of a registered model.

    Raises
    ------
    ConfigurationError
        If nothing of that name exists, the file does not load, or the model
        is of the other stage.
    """
    if name_or_path == DEMO_MODEL:
        from density_db.inference.checkpoints import demo_checkpoint, file_sha256

        path = demo_checkpoint(stage)
        sha256 = file_sha256(path)
        name = f"demo-{stage}"
        with database.engine.connect() as connection:
            owner = connection.execute(sa.select(Model.sha256).where(Model.name == name)).scalar()
        if owner is not None and owner != sha256:  # the demo model of another density-db version
            name = f"{name}-{sha256[:8]}"
        registered, _new = register_model(database, path, name=name, stage=stage)
    elif Path(name_or_path).is_file():
        registered, _new = register_model(database, Path(name_or_path), architecture=architecture, stage=stage)
    else:
        registered = find_model(database, name_or_path)
    if registered.stage != stage:
        raise ConfigurationError(f"model {registered.name!r} is a {registered.stage}, not a {stage}")
    if registered.path is None or not Path(registered.path).is_file():
        raise _file_gone(registered)
    return registered


@dataclass(frozen=True)
class ModelPair:
    """The classifier and regressor of a run, as registered: every result is keyed by this pair.

    Build it with :meth:`resolve`, which checks that the two stages take the
    same model input (each frame is reduced once for both).
    """

    classifier: RegisteredModel
    regressor: RegisteredModel

    @classmethod
    def resolve(
        cls,
        database: Database,
        classifier: str = DEMO_MODEL,
        regressor: str = DEMO_MODEL,
        *,
        classifier_architecture: str | None = None,
        regressor_architecture: str | None = None,
    ) -> ModelPair:
        """The pair that two command-line style arguments mean (see :func:`resolve_model`).

        Logs a warning when the classifier's classes count other stars than
        this density-db's labels do (it was trained under another label rule).

        Raises
        ------
        ConfigurationError
            If a model cannot be found or loaded, is of the other stage, or
            the two stages take different model inputs.
        """
        pair = cls(
            resolve_model(database, classifier, stage="classifier", architecture=classifier_architecture),
            resolve_model(database, regressor, stage="regressor", architecture=regressor_architecture),
        )
        pair.preprocessing_version  # noqa: B018 - raises when the stages disagree
        if pair.label_rule != LABEL_RULE:
            logger.warning(
                "%s was trained under the %r label rule: its classes count %s, not %s (%r)",
                pair.classifier.name,
                pair.label_rule,
                label_rule(pair.label_rule).description,
                label_rule(LABEL_RULE).description,
                LABEL_RULE,
            )
        return pair

    @property
    def models(self) -> tuple[RegisteredModel, RegisteredModel]:
        """(classifier, regressor)."""
        return self.classifier, self.regressor

    @property
    def ids(self) -> tuple[int, int]:
        """The ``model`` rows' ids: (classifier, regressor)."""
        return self.classifier.id, self.regressor.id

    @property
    def label_rule(self) -> str:
        """The label rule the classifier's classes follow (recorded in its checkpoint)."""
        return recorded_label_rule(self.classifier.metadata)

    @property
    def preprocessing_version(self) -> int:
        """The model input both stages take.

        Raises
        ------
        ConfigurationError
            If the checkpoints record different versions.
        """
        from density_db.inference.checkpoints import recorded_preprocessing_version

        versions = {model.name: recorded_preprocessing_version(model.metadata) for model in self.models}
        if len(set(versions.values())) > 1:
            raise ConfigurationError(
                "the two stages take different model inputs: "
                + ", ".join(f"{name} preprocessing version {version}" for name, version in versions.items())
            )
        return versions[self.classifier.name]

    def worker_spec(self, *, device: str, torch_threads: int | None) -> ModelSpec:
        """What Dask workers are given to load the pair (paths, checksums, architectures) and run it."""
        return ModelSpec(
            classifier=CheckpointFile(self.classifier.path, self.classifier.sha256, self.classifier.architecture),
            regressor=CheckpointFile(self.regressor.path, self.regressor.sha256, self.regressor.architecture),
            device=device,
            torch_threads=torch_threads,
            preprocessing_version=self.preprocessing_version,
        )


def checkpoint_path(database: Database | None, name_or_path: str) -> Path:
    """A checkpoint file from a path, or from a registered model's name (needs ``database``)."""
    candidate = Path(name_or_path)
    if candidate.exists():
        return candidate
    if database is None:
        raise ConfigurationError(f"{name_or_path} is not a file")
    registered = find_model(database, name_or_path)
    if registered.path is None or not Path(registered.path).exists():
        raise _file_gone(registered)
    return Path(registered.path)


def _file_gone(registered: RegisteredModel) -> ConfigurationError:
    return ConfigurationError(
        f"model {registered.name!r} is registered but its file {registered.path} is gone; "
        "give the checkpoint's new path (or `density-db models add PATH`) and the row follows it"
    )
