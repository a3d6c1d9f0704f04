"""Alembic environment for ckanext-archiver (run by ``ckan db upgrade -p
archiver``). Versions are kept in ``archiver_alembic_version``."""

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
# Keep the extension's (and CKAN's) loggers alive after a migration.
fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = None
name = os.path.basename(os.path.dirname(__file__))
version_table = f"{name}_alembic_version"


def run_migrations_offline():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        version_table=version_table,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    connectable = engine_from_config(
        config.get_section(config.config_ini_section),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with connectable.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table=version_table,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
