"""Model registry: versions of model files and hosted LLMs in the catalog."""

import logging
import random
from typing import Any

import anyio
import anyio.to_thread

from mlhub_mcp.catalog import Page
from mlhub_mcp.errors import Conflict, InvalidInput, NotFound
from mlhub_mcp.ids import new_id, utc_now
from mlhub_mcp.models._formats import TASK_TYPES, detect_format, inspect_model_file
from mlhub_mcp.paths import check_entry_name
from mlhub_mcp.platform import Platform

logger = logging.getLogger(__name__)

# Registrations of one name race for the next version number, and each round
# of the race has one winner, so a loser may need as many tries as there are
# concurrent registrations. The random pause spreads the retries apart.
_VERSION_TRIES = 50
_RETRY_PAUSE_SECONDS = 0.02


class ModelRegistry:
    """Registers, lists and deletes models."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.catalog = platform.catalog

    async def _next_version(self, name: str) -> int:
        versions = [m["version"] for m in await self.catalog.find_all("models", {"name": name})]
        return max(versions, default=0) + 1

    async def _insert_next_version(self, doc: dict[str, Any]) -> dict[str, Any]:
        # The unique (name, version) index lets exactly one of two racing
        # registrations insert a version number, and the other tries the next one.
        for attempt in range(1, _VERSION_TRIES + 1):
            doc["version"] = await self._next_version(doc["name"])
            try:
                return await self.catalog.insert("models", doc)
            except Conflict:
                logger.debug(
                    "model %s version %s was taken meanwhile (try %s of %s)",
                    doc["name"],
                    doc["version"],
                    attempt,
                    _VERSION_TRIES,
                )

            await anyio.sleep(random.uniform(0, _RETRY_PAUSE_SECONDS))

        raise Conflict(
            f"could not allocate a version for model {doc['name']!r} after {_VERSION_TRIES} "
            "tries, because other registrations of this name kept taking the next number; "
            "try again"
        )

    async def register_file(
        self,
        *,
        name: str,
        path: str | None = None,
        content_base64: str | None = None,
        file_name: str | None = None,
        description: str = "",
        task_type: str | None = None,
        model_format: str | None = None,
        trusted: bool = False,
        preprocessing: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Check a model file, store it and add its next version to the catalog."""
        check_entry_name(name, "model")
        if task_type is not None and task_type not in TASK_TYPES:
            raise InvalidInput(f"unknown task type {task_type!r}; use one of {TASK_TYPES}")

        async with self.platform.staged_input(path, content_base64, file_name) as (local, fname):
            fmt = detect_format(fname, model_format)
            info = await anyio.to_thread.run_sync(
                inspect_model_file, local, fmt, trusted, preprocessing
            )
            stored = await self.platform.artifacts.put_file(local)

        doc = {
            "id": new_id(),
            "name": name,
            "kind": "file",
            "description": description,
            "task_type": task_type or info.task_type,
            "framework": info.framework,
            "format": info.format,
            "file_name": fname,
            "size_bytes": stored.size,
            "sha256": stored.sha256,
            "artifact_key": stored.key,
            "signature": info.signature,
            "trusted": trusted,
            "preprocessing": preprocessing or {},
            "created_at": utc_now(),
        }
        try:
            doc = await self._insert_next_version(doc)
        except BaseException:
            await self.platform.release_artifact(stored.key)
            raise

        logger.info("registered model %s version %s (%s)", name, doc["version"], fmt)
        return doc

    async def register_llm(
        self,
        *,
        name: str,
        provider: str,
        provider_model: str,
        description: str = "",
    ) -> dict[str, Any]:
        """Add a hosted LLM, which has no file, as the next version of ``name``."""
        check_entry_name(name, "model")
        if provider != "groq":
            raise InvalidInput(f"unknown LLM provider {provider!r}; the supported one is 'groq'")
        if not provider_model or len(provider_model) > 200:
            raise InvalidInput(
                "'provider_model' must name the hosted model, e.g. 'llama-3.3-70b-versatile'"
            )

        doc = {
            "id": new_id(),
            "name": name,
            "kind": "llm",
            "description": description,
            "task_type": "text-generation",
            "framework": provider,
            "format": "hosted-llm",
            "provider": provider,
            "provider_model": provider_model,
            "file_name": None,
            "size_bytes": 0,
            "sha256": None,
            "artifact_key": None,
            "signature": {"inputs": [{"name": "prompt", "dtype": "string"}]},
            "trusted": True,
            "preprocessing": {},
            "created_at": utc_now(),
        }
        doc = await self._insert_next_version(doc)
        logger.info("registered LLM %s version %s (%s)", name, doc["version"], provider_model)
        return doc

    async def get(self, name: str, version: int | None = None) -> dict[str, Any]:
        """Return one version of a model, the latest when ``version`` is None.

        Raises:
            NotFound: No such model or version.
        """
        if version is not None:
            doc = await self.catalog.find_one("models", {"name": name, "version": version})
            if doc is None:
                known = [
                    m["version"] for m in await self.catalog.find_all("models", {"name": name})
                ]
                hint = (
                    f"known versions: {sorted(known)}" if known else "list_models shows the names"
                )
                raise NotFound("model", f"{name} version {version}", hint)
            return doc

        versions = await self.catalog.find_all("models", {"name": name})
        if not versions:
            raise NotFound("model", name, "list_models shows the registered models")
        return max(versions, key=lambda m: m["version"])

    async def versions(self, name: str) -> list[dict[str, Any]]:
        docs = await self.catalog.find_all("models", {"name": name})
        if not docs:
            raise NotFound("model", name, "list_models shows the registered models")
        return sorted(docs, key=lambda m: m["version"])

    async def list_page(
        self,
        *,
        name: str | None = None,
        task_type: str | None = None,
        framework: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        filters = {
            key: value
            for key, value in (("name", name), ("task_type", task_type), ("framework", framework))
            if value is not None
        }
        return await self.catalog.find("models", filters, limit=limit, cursor=cursor)

    async def delete(self, name: str, version: int | None = None) -> list[dict[str, Any]]:
        """Delete one version, or every version, of a model and its unreferenced files.

        Raises:
            NotFound: No such model or version.
            Conflict: A deployment still uses a version to delete.
        """
        targets = (
            [await self.get(name, version)] if version is not None else await self.versions(name)
        )

        for doc in targets:
            deployment = await self.catalog.find_one("deployments", {"model_id": doc["id"]})
            if deployment is not None:
                raise Conflict(
                    f"model {name!r} version {doc['version']} is used by deployment "
                    f"{deployment['name']!r}; delete the deployment first"
                )

        for doc in targets:
            await self.catalog.delete("models", doc["id"])
            await self.platform.release_artifact(doc.get("artifact_key"))
            logger.info("deleted model %s version %s", name, doc["version"])

        return targets
