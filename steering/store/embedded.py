"""Embedded registry: one SQLite file under the data directory (the zero-config default; survives restarts).

For one server process. Replicas that must share vectors use Redis (`steering.store.redis_store`).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from steering.errors import ConflictError
from steering.store.base import (
    Preset,
    VectorRecord,
    VectorStore,
    check_name,
    decode_layers,
    encode_layers,
    make_record,
    referencing_presets,
)
from steering.vectors import Float32Array, SteeringVector, VectorDefaults

SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (ns TEXT, id TEXT, version INTEGER, meta TEXT, PRIMARY KEY (ns, id, version));
CREATE TABLE IF NOT EXISTS vector_layers (ns TEXT, id TEXT, version INTEGER, layer INTEGER, data BLOB,
    PRIMARY KEY (ns, id, version, layer));
CREATE TABLE IF NOT EXISTS presets (ns TEXT, name TEXT, body TEXT, PRIMARY KEY (ns, name));
CREATE TABLE IF NOT EXISTS documents (ns TEXT, kind TEXT, name TEXT, body TEXT, PRIMARY KEY (ns, kind, name));
CREATE TABLE IF NOT EXISTS counters (ns TEXT, kind TEXT, name TEXT, field TEXT, value REAL,
    PRIMARY KEY (ns, kind, name, field));
"""


class EmbeddedStore(VectorStore):
    def __init__(self, path: Path, namespace: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.namespace = namespace
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    async def _run(self, fn: Any, *args: Any) -> Any:
        def locked() -> Any:
            with self._lock:
                return fn(*args)

        return await asyncio.to_thread(locked)

    # ---- vectors ------------------------------------------------------------------------------------------
    async def add_vector(
        self,
        vector_id: str,
        layers: Mapping[int, Float32Array],
        defaults: VectorDefaults,
        description: str = "",
        provenance: Mapping[str, Any] | None = None,
        model: Mapping[str, Any] | None = None,
    ) -> VectorRecord:
        check_name("vector", vector_id)

        def write() -> VectorRecord:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT MAX(version) FROM vectors WHERE ns=? AND id=?", (self.namespace, vector_id)
                ).fetchone()
                version = (row[0] or 0) + 1
                record = make_record(vector_id, version, layers, defaults, description, provenance or {}, model or {})
                db.execute(
                    "INSERT INTO vectors VALUES (?, ?, ?, ?)",
                    (self.namespace, vector_id, version, json.dumps(record.to_json())),
                )
                db.executemany(
                    "INSERT INTO vector_layers VALUES (?, ?, ?, ?, ?)",
                    [(self.namespace, vector_id, version, k, v) for k, v in encode_layers(layers).items()],
                )
                db.execute("COMMIT")
                return record
            except BaseException:
                db.execute("ROLLBACK")
                raise

        record: VectorRecord = await self._run(write)
        return record

    async def get_vector(self, vector_id: str, version: int | None = None) -> tuple[VectorRecord, SteeringVector]:
        def read() -> tuple[VectorRecord, SteeringVector]:
            if version is None:
                row = self._db.execute(
                    "SELECT meta FROM vectors WHERE ns=? AND id=? ORDER BY version DESC LIMIT 1",
                    (self.namespace, vector_id),
                ).fetchone()
            else:
                row = self._db.execute(
                    "SELECT meta FROM vectors WHERE ns=? AND id=? AND version=?", (self.namespace, vector_id, version)
                ).fetchone()
            if row is None:
                raise KeyError(vector_id)
            record = VectorRecord.from_json(json.loads(row[0]))
            rows = self._db.execute(
                "SELECT layer, data FROM vector_layers WHERE ns=? AND id=? AND version=?",
                (self.namespace, vector_id, record.version),
            ).fetchall()
            layers = decode_layers({int(k): bytes(v) for k, v in rows})
            return record, SteeringVector(vector_id, layers, record.version, record.defaults)

        result: tuple[VectorRecord, SteeringVector] = await self._run(read)
        return result

    async def latest_version(self, vector_id: str) -> int | None:
        def read() -> int | None:
            row = self._db.execute(
                "SELECT MAX(version) FROM vectors WHERE ns=? AND id=?", (self.namespace, vector_id)
            ).fetchone()
            return int(row[0]) if row and row[0] is not None else None

        version: int | None = await self._run(read)
        return version

    async def list_versions(self, vector_id: str) -> list[VectorRecord]:
        def read() -> list[VectorRecord]:
            rows = self._db.execute(
                "SELECT meta FROM vectors WHERE ns=? AND id=? ORDER BY version", (self.namespace, vector_id)
            ).fetchall()
            return [VectorRecord.from_json(json.loads(r[0])) for r in rows]

        records: list[VectorRecord] = await self._run(read)
        return records

    async def list_vectors(self) -> list[VectorRecord]:
        def read() -> list[VectorRecord]:
            rows = self._db.execute(
                "SELECT meta FROM vectors v WHERE ns=? AND version = "
                "(SELECT MAX(version) FROM vectors w WHERE w.ns=v.ns AND w.id=v.id) ORDER BY id",
                (self.namespace,),
            ).fetchall()
            return [VectorRecord.from_json(json.loads(r[0])) for r in rows]

        records: list[VectorRecord] = await self._run(read)
        return records

    async def delete_vector(self, vector_id: str) -> bool:
        def delete() -> bool:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                presets = [
                    Preset.model_validate_json(r[0])
                    for r in db.execute("SELECT body FROM presets WHERE ns=?", (self.namespace,)).fetchall()
                ]
                users = referencing_presets(presets, vector_id)
                if users:
                    raise ConflictError(f"vector {vector_id!r} is used by presets {users}")
                cur = db.execute("DELETE FROM vectors WHERE ns=? AND id=?", (self.namespace, vector_id))
                db.execute("DELETE FROM vector_layers WHERE ns=? AND id=?", (self.namespace, vector_id))
                db.execute("COMMIT")
                return cur.rowcount > 0
            except BaseException:
                db.execute("ROLLBACK")
                raise

        deleted: bool = await self._run(delete)
        return deleted

    # ---- presets ------------------------------------------------------------------------------------------
    async def put_preset(self, preset: Preset) -> None:
        check_name("preset", preset.name)
        await self._run(
            self._db.execute,
            "INSERT OR REPLACE INTO presets VALUES (?, ?, ?)",
            (self.namespace, preset.name, preset.model_dump_json()),
        )

    async def get_preset(self, name: str) -> Preset | None:
        def read() -> Preset | None:
            row = self._db.execute("SELECT body FROM presets WHERE ns=? AND name=?", (self.namespace, name)).fetchone()
            return Preset.model_validate_json(row[0]) if row else None

        preset: Preset | None = await self._run(read)
        return preset

    async def list_presets(self) -> list[Preset]:
        def read() -> list[Preset]:
            rows = self._db.execute("SELECT body FROM presets WHERE ns=? ORDER BY name", (self.namespace,)).fetchall()
            return [Preset.model_validate_json(r[0]) for r in rows]

        presets: list[Preset] = await self._run(read)
        return presets

    async def delete_preset(self, name: str) -> bool:
        def delete() -> bool:
            cur = self._db.execute("DELETE FROM presets WHERE ns=? AND name=?", (self.namespace, name))
            return cur.rowcount > 0

        deleted: bool = await self._run(delete)
        return deleted

    # ---- documents and counters ---------------------------------------------------------------------------
    async def put_document(self, kind: str, name: str, body: Mapping[str, Any]) -> None:
        sql = "INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?)"
        await self._run(self._db.execute, sql, (self.namespace, kind, name, json.dumps(dict(body))))

    async def get_document(self, kind: str, name: str) -> dict[str, Any] | None:
        def read() -> dict[str, Any] | None:
            sql = "SELECT body FROM documents WHERE ns=? AND kind=? AND name=?"
            row = self._db.execute(sql, (self.namespace, kind, name)).fetchone()
            return json.loads(row[0]) if row else None

        result: dict[str, Any] | None = await self._run(read)
        return result

    async def list_documents(self, kind: str) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            sql = "SELECT body FROM documents WHERE ns=? AND kind=? ORDER BY name"
            return [json.loads(row[0]) for row in self._db.execute(sql, (self.namespace, kind))]

        result: list[dict[str, Any]] = await self._run(read)
        return result

    async def delete_document(self, kind: str, name: str) -> bool:
        def delete() -> bool:
            key = (self.namespace, kind, name)
            with self._db:
                self._db.execute("BEGIN")
                self._db.execute("DELETE FROM counters WHERE ns=? AND kind=? AND name=?", key)
                return self._db.execute("DELETE FROM documents WHERE ns=? AND kind=? AND name=?", key).rowcount > 0

        deleted: bool = await self._run(delete)
        return deleted

    async def add_counters(self, kind: str, name: str, deltas: Mapping[str, float]) -> None:
        def write() -> None:
            sql = (
                "INSERT INTO counters VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (ns, kind, name, field) DO UPDATE SET value = value + excluded.value"
            )
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    sql, [(self.namespace, kind, name, field, float(v)) for field, v in deltas.items()]
                )

        await self._run(write)

    async def get_counters(self, kind: str, name: str) -> dict[str, float]:
        def read() -> dict[str, float]:
            sql = "SELECT field, value FROM counters WHERE ns=? AND kind=? AND name=?"
            return {field: float(value) for field, value in self._db.execute(sql, (self.namespace, kind, name))}

        result: dict[str, float] = await self._run(read)
        return result

    async def close(self) -> None:
        await self._run(self._db.close)
