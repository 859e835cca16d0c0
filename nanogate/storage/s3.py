"""The S3 backend: objects in an S3-compatible bucket, so every node serves every result.

An object's key is `<s3_prefix><name>`; its name is the local backend's (content-addressed),
so putting the same bytes again rewrites the same key, which starts its retention over. The
client is aiobotocore: bench/s3_clients.py measured it against obstore (even on a 16 MiB put
and get), and only it speaks the bucket API the retention rule needs.

Retention: a lifecycle rule on the prefix (expire after ceil(result_ttl_hours / 24) days) where
the server takes one, so the bucket removes results itself; otherwise `sweep` lists the prefix
and deletes what is older, as the local backend does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, cast

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import ClientCreatorContext, get_session
from botocore.exceptions import BotoCoreError, ClientError

from nanogate.core.config import Settings
from nanogate.core.metrics import observe_storage_error
from nanogate.storage import (
    StorageError,
    Stored,
    content_type_for,
    name_for,
    signed_url,
    valid_name,
)
from nanogate.storage.signing import UrlSigner

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import LifecycleRuleTypeDef

log = logging.getLogger("nanogate")

# Our rule's ID in the bucket's lifecycle configuration; rules with other IDs are kept.
RULE_ID = "nanogate-result-retention"
# The longest a presigned URL may be valid (SigV4's limit).
PRESIGN_MAX_S = 7 * 24 * 3600
# DeleteObjects takes at most this many keys a call.
_DELETE_BATCH = 1000
# What a server answers when it does not do lifecycle rules, or lets us not set one: then the
# sweep removes old results.
_REFUSALS = frozenset({"NotImplemented", "AccessDenied", "MethodNotAllowed", "InvalidRequest"})
_MISSING = frozenset({"NoSuchKey", "NotFound", "404"})
# Failures the operator must fix, and what to call them; any other is taken as passing.
_SETUP_FAULTS = {
    "NoSuchBucket": "its bucket does not exist",
    "AccessDenied": "access was denied",
    "AllAccessDisabled": "access was denied",
    "InvalidAccessKeyId": "its credentials were refused",
    "SignatureDoesNotMatch": "its credentials were refused",
}


class S3Storage:
    def __init__(
        self,
        *,
        bucket: str,
        prefix: str,
        public_base_url: str,
        signer: UrlSigner,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        path_style: bool = False,
        redirect: bool = False,
        retention_days: int | None = None,
    ) -> None:
        """`retention_days`: the lifecycle rule to set (None: set none, sweep instead)."""
        self._bucket = bucket
        self._prefix = prefix
        self._base_url = public_base_url.rstrip("/")
        self._signer = signer
        self._redirect = redirect
        self._retention_days = retention_days
        self._connect: Callable[[], ClientCreatorContext[S3Client]] = functools.partial(
            get_session().create_client,
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=AioConfig(
                s3={"addressing_style": "path" if path_style else "auto"},
                # Presigned URLs too: botocore would sign those with SigV2, which newer regions
                # and many S3-compatible servers refuse.
                signature_version="s3v4",
                connect_timeout=5,
                read_timeout=60,
                retries={"max_attempts": 3, "mode": "standard"},
                # Checksums only where S3 requires them: many S3-compatible servers refuse the
                # ones botocore adds by default, and each is a pass over the bytes on the loop.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        self._open = contextlib.AsyncExitStack()
        self._client: S3Client | None = None
        self._opening = asyncio.Lock()
        # Whether the bucket's lifecycle rule removes old results: None until a server answers.
        self._lifecycle: bool | None = None if retention_days else False

    @classmethod
    def from_settings(cls, settings: Settings, signer: UrlSigner) -> S3Storage:
        assert settings.s3_bucket is not None  # Settings refuses s3 without a bucket
        secret = settings.s3_secret_access_key
        return cls(
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            public_base_url=settings.resolved_public_base_url,
            signer=signer,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=secret.get_secret_value() if secret else None,
            path_style=settings.s3_path_style,
            redirect=settings.storage_redirect,
            retention_days=math.ceil(settings.result_ttl_hours / 24),
        )

    async def start(self) -> None:
        """Set the retention rule; if the bucket cannot be reached now, the next sweep tries."""
        # Logged where it failed; requests meanwhile get a 503 naming storage.
        with contextlib.suppress(StorageError):
            await self._retention_by_lifecycle()

    async def put(self, data: bytes, content_type: str) -> Stored:
        name = name_for(data, content_type)
        client = await self._s3()
        with self._failures("put"):
            await client.put_object(
                Bucket=self._bucket,
                Key=self._key(name),
                Body=data,
                ContentType=content_type_for(name),
            )
        return Stored(name, content_type_for(name), len(data))

    async def get(self, name: str) -> tuple[bytes, str] | None:
        if not valid_name(name):
            return None
        client = await self._s3()
        with self._failures("get"):
            try:
                answer = await client.get_object(Bucket=self._bucket, Key=self._key(name))
            except ClientError as exc:
                if _code(exc) in _MISSING:
                    return None
                raise
            async with answer["Body"] as body:
                data = await body.read()
        return data, content_type_for(name)

    async def delete(self, name: str) -> bool:
        if not valid_name(name):
            return False
        client = await self._s3()
        with self._failures("delete"):
            # S3 deletes a missing key without complaint: ask first, to say whether one was.
            try:
                await client.head_object(Bucket=self._bucket, Key=self._key(name))
            except ClientError as exc:
                if _code(exc) in _MISSING:
                    return False
                raise
            await client.delete_object(Bucket=self._bucket, Key=self._key(name))
        return True

    async def sweep(self, older_than: datetime) -> int:
        """Remove objects last put before `older_than` (naive means UTC); 0 while the bucket's
        lifecycle rule does it.

        Another node may put the same bytes again between the listing and the delete; that
        refresh is lost with the object, as it would be under the lifecycle rule.
        """
        if await self._retention_by_lifecycle():
            return 0
        if older_than.tzinfo is None:
            older_than = older_than.replace(tzinfo=UTC)
        client = await self._s3()
        removed = 0
        with self._failures("sweep"):
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=self._bucket, Prefix=self._prefix
            )
            old: list[str] = []
            async for page in pages:
                for entry in page.get("Contents", []):
                    key = entry["Key"]
                    if valid_name(key.removeprefix(self._prefix)) and (
                        entry["LastModified"] < older_than
                    ):
                        old.append(key)
            for start in range(0, len(old), _DELETE_BATCH):
                batch = old[start : start + _DELETE_BATCH]
                answer = await client.delete_objects(
                    Bucket=self._bucket,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
                removed += len(batch) - len(answer.get("Errors", []))
        return removed

    async def check(self) -> None:
        """HEAD the bucket: it exists and these credentials reach it."""
        client = await self._s3()
        with self._failures("check"):
            await client.head_bucket(Bucket=self._bucket)

    def url(self, name: str, *, expires: int) -> str:
        return signed_url(self._base_url, self._signer, name, expires)

    async def redirect_url(self, name: str, *, method: str, expires: int) -> str | None:
        if not self._redirect or not valid_name(name):
            return None
        client = await self._s3()
        # Valid until the gateway's link expires, within S3's limit; at least a second.
        seconds = max(1, min(expires - math.floor(time.time()), PRESIGN_MAX_S))
        with self._failures("presign"):
            return await client.generate_presigned_url(
                "head_object" if method == "HEAD" else "get_object",
                Params={"Bucket": self._bucket, "Key": self._key(name)},
                ExpiresIn=seconds,
            )

    async def close(self) -> None:
        self._client = None
        await self._open.aclose()

    def _key(self, name: str) -> str:
        return self._prefix + name

    async def _s3(self) -> S3Client:
        """The client, made on first use (it needs the running loop)."""
        async with self._opening:
            if self._client is None:
                # Makes no request: the server is first asked by the operation that follows.
                self._client = await self._open.enter_async_context(self._connect())
            return self._client

    async def _retention_by_lifecycle(self) -> bool:
        """Whether the bucket's lifecycle rule removes old results: set it on the first call
        that reaches the server; False for good if the server refuses it."""
        if self._lifecycle is not None:
            return self._lifecycle
        assert self._retention_days is not None
        ours: LifecycleRuleTypeDef = {
            "ID": RULE_ID,
            "Status": "Enabled",
            "Filter": {"Prefix": self._prefix},
            "Expiration": {"Days": self._retention_days},
        }
        client = await self._s3()
        with self._failures("set the lifecycle rule"):
            try:
                rules = await self._lifecycle_rules(client)
                # The operator's own rules on the bucket stay; ours replaces its former self.
                kept = [rule for rule in rules if rule.get("ID") != RULE_ID]
                await client.put_bucket_lifecycle_configuration(
                    Bucket=self._bucket, LifecycleConfiguration={"Rules": [*kept, ours]}
                )
            except ClientError as exc:
                if _code(exc) not in _REFUSALS and _status(exc) not in (405, 501):
                    raise
                log.info(
                    "s3 lifecycle rule refused; the sweeper removes old results",
                    extra={"code": _code(exc)},
                )
                self._lifecycle = False
                return False
        log.info("s3 lifecycle rule set", extra={"days": self._retention_days})
        self._lifecycle = True
        return True

    async def _lifecycle_rules(self, client: S3Client) -> list[LifecycleRuleTypeDef]:
        try:
            answer = await client.get_bucket_lifecycle_configuration(Bucket=self._bucket)
        except ClientError as exc:
            if _code(exc) == "NoSuchLifecycleConfiguration":
                return []
            raise
        # Rules come back in the shape they are put in; the stubs name the two apart.
        return cast("list[LifecycleRuleTypeDef]", answer.get("Rules", []))

    @contextlib.contextmanager
    def _failures(self, doing: str) -> Iterator[None]:
        """Any failure to reach or use the bucket, as a StorageError that names storage."""
        try:
            yield
        except ClientError as exc:
            code = _code(exc)
            fault = _SETUP_FAULTS.get(code)
            observe_storage_error(doing)
            log.warning("s3 storage failed", extra={"operation": doing, "code": code})
            if fault is not None:
                raise StorageError(
                    f"The gateway's result storage failed: {fault}. The operator must fix the "
                    "storage settings."
                ) from exc
            raise StorageError(
                f"The gateway's result storage failed (S3 answered {code or 'an error'}); retry "
                "shortly."
            ) from exc
        except (BotoCoreError, aiohttp.ClientError, OSError) as exc:
            observe_storage_error(doing)
            log.warning(
                "s3 storage unreachable", extra={"operation": doing, "error": type(exc).__name__}
            )
            raise StorageError(
                "The gateway's result storage could not be reached; retry shortly."
            ) from exc


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
