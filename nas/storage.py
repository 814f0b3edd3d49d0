"""Opening a study's database (Optuna's RDB storage) from the URL a user writes: SQLite in the run
folder or a server such as PostgreSQL, with a one-line refusal naming the driver to install."""
from __future__ import annotations

import time
import warnings
from typing import Callable

import optuna

from .run_folder import RunFolderError

Heartbeat = tuple[int, int, Callable]

# PostgreSQL's codes for unique_violation, duplicate_table and duplicate_object
_LOST_CREATE_RACE = {"23505", "42P07", "42710"}
# The pip package of each database driver SQLAlchemy may import, where the names differ: SQLAlchemy (and
# Optuna after it) says only that an import failed, not what to install.
_DRIVER_PACKAGES = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient",
                    "pymysql": "PyMySQL", "cx_Oracle": "cx-Oracle"}


def _open_storage(url: str, heartbeat: Heartbeat | None = None) -> optuna.storages.RDBStorage:
    import sqlalchemy.exc

    _check_driver(url)
    interval, grace, on_stale = heartbeat or (None, None, None)

    def storage() -> optuna.storages.RDBStorage:
        with warnings.catch_warnings():  # the heartbeat arguments are marked experimental
            warnings.simplefilter("ignore")
            return optuna.storages.RDBStorage(url, heartbeat_interval=interval, grace_period=grace,
                                              heartbeat_stale_trial_callback=on_stale)

    for attempt in range(4):
        try:
            return storage()
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            # Drivers started together on a fresh PostgreSQL database race to create Optuna's tables: the
            # loser's CREATE hits the catalogue's unique index or finds the table made, and the winner's
            # tables are there now. Any other error is the user's to see. (psycopg 3 names the code
            # sqlstate, psycopg2 pgcode.)
            code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
            if code not in _LOST_CREATE_RACE:
                raise
            time.sleep(0.5 * (attempt + 1))
    return storage()  # the last try lets any error through


def open_storage(url: str, heartbeat: Heartbeat | None = None) -> optuna.storages.RDBStorage:
    """The study's storage, or a one-line RunFolderError naming the URL (its password hidden) and why.
    `heartbeat`: (interval s, grace s, what to do with a stale trial), for a driver running trials."""
    try:
        return _open_storage(url, heartbeat)
    except Exception as exc:  # the driver's own first line: SQLAlchemy adds a line of links
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RunFolderError(f"--storage {_shown(url)!r} cannot be opened: {why}") from None


def _shown(url: str) -> str:
    """The URL as printed: a password never reaches a terminal or a log."""
    import sqlalchemy.engine

    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: nothing in it to hide
        return url


def _check_driver(url: str) -> None:
    """Refuse a URL whose database is unknown to SQLAlchemy, or whose driver is not installed, in one line
    naming what to install. A bare postgresql:// selects psycopg (3) with SQLAlchemy 2.1, which the
    `postgres` extra installs; postgresql+psycopg2:// would need psycopg2."""
    import sqlalchemy.engine
    import sqlalchemy.exc

    parsed = sqlalchemy.engine.make_url(url)
    try:
        dialect = parsed.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        raise ValueError(f"SQLAlchemy has no dialect {parsed.drivername!r} (a URL such as sqlite:///study.db or "
                         "postgresql://USER:PASSWORD@HOST:5432/DB)") from None
    import_dbapi = getattr(dialect, "import_dbapi", None) or dialect.dbapi  # dbapi(): SQLAlchemy 1.4
    try:
        import_dbapi()
    except ImportError as exc:
        module = (exc.name or "").split(".")[0]
        if not module:  # the driver is there but cannot load (a missing library, say)
            raise ValueError(f"its database driver cannot be loaded: {str(exc).splitlines()[0]}") from None
        raise ValueError(f"its database driver {module} is not installed; install it with: "
                         f"pip install {_DRIVER_PACKAGES.get(module, module)}") from None
