"""Who holds which partitions in a worker group, read from the broker (kafka-python's admin client).

Each worker's Kafka client id names its pid (streams/app.py), so a member can be tied to its process.
"""

from __future__ import annotations

import base64
import contextlib
import re
import struct
from typing import Any

from streams.localbroker import _admin


def holds(value: Any, topic: str) -> bool:
    """Whether a member's assignment holds a partition of ``topic``.

    kafka-python leaves it decoded, or as the raw ConsumerProtocol bytes (Faust's user data defeats its
    decoder now and then): every member lists every subscribed topic, followed by an int32 count of the
    partitions it was given.
    """
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = base64.b64decode(value, validate=True)
    if isinstance(value, bytes | bytearray):
        name = topic.encode()
        at = value.find(struct.pack(">h", len(name)) + name)
        if at < 0:
            return False
        start = at + 2 + len(name)
        return int.from_bytes(value[start : start + 4], "big") > 0
    if isinstance(value, dict):  # to_dict() of a decoded assignment
        parts = value.get("assigned_partitions") or value.get("assignment") or []
        return any(isinstance(tp, dict) and tp.get("topic") == topic and tp.get("partitions") for tp in parts)
    for tp in getattr(value, "assigned_partitions", None) or []:
        if getattr(tp, "topic", None) == topic and getattr(tp, "partitions", None):
            return True
    return False


def members(bootstrap: str, group_id: str) -> list[dict[str, Any]]:
    """The group's members as the broker describes them (client_id, member_assignment, ...)."""
    admin = _admin(bootstrap, 10)
    try:
        groups = admin.describe_groups([group_id])
    finally:
        admin.close()
    return list((groups.get(group_id) or {}).get("members") or [])


def pid_of(member: dict[str, Any]) -> int | None:
    found = re.search(r"-(\d+)$", str(member.get("client_id")))
    return int(found.group(1)) if found else None
