"""The devices a plan is for: a description ("8xH100-80GB", "4x48GB", "cpu:4") or the devices
this host has, reduced to one `DeviceSet` of alike devices."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..hosts.hardware import HARDWARE, LINKS, Hardware, Link, cpu_hardware, hardware_for_gpu
from ..hosts.inventory import Device, DeviceSpecError, cpu_device_memory, discover
from mgpud.units import parse_size


@dataclass(frozen=True)
class DeviceSet:
    """The devices a plan may use, all alike."""

    label: str  # "8x H100-80GB", "cpu:4", "2x NVIDIA H100 80GB HBM3"
    kind: str  # "cuda" | "cpu"
    count: int
    memory: int  # bytes per device (the smallest when they differ)
    hardware: Hardware | None  # None: figures unknown, no throughput estimate
    in_use: int = 0  # bytes other processes hold now on the busiest device
    notes: tuple[str, ...] = ()
    link: Link | None = None  # devices known by their memory alone: the interconnect --link names


_DESCRIPTION = re.compile(r"^(?:(\d+)\s*x\s*)?([a-z0-9.-]+)$", re.IGNORECASE)


def describe(spec: str, device_memory: int | None = None, link: str | None = None) -> DeviceSet | None:
    """The pool "8xH100-80GB", "A100-40GB" or "cpu:4" describes; None if `spec` is no description.

    device_memory: bytes per CPU device (default: the share devices.cpu_devices gives).
    link: "pcie" or "nvlink", what connects devices named by their memory alone ("4x48GB").
    """
    text = spec.strip()
    if text.lower().startswith("cpu:") and text[4:].isdigit() and int(text[4:]) > 0:
        _no_link(link, f"{text} (CPU devices talk through gloo on this host)")
        return cpu_device_set(int(text[4:]), device_memory)
    match = _DESCRIPTION.match(text)
    if match is None:
        return None
    count, model = int(match.group(1) or 1), match.group(2).lower()
    if count < 1:
        return None
    hardware = next((h for name, h in HARDWARE.items() if name.lower() == model), None)
    if hardware is not None:
        _no_link(link, f"{hardware.name} (its interconnect is {hardware.link})")
        return DeviceSet(f"{count}x {hardware.name}", "cuda", count, hardware.memory, hardware)
    memory = _custom_memory(model)
    if memory is None:
        return None
    return _custom_set(count, match.group(2), memory, link)


def _custom_set(count: int, name: str, memory: int, link: str | None) -> DeviceSet:
    """`count` devices known by their `memory` alone, connected by the `link` named, if any."""
    if link is None:
        return DeviceSet(f"{count}x {name}", "cuda", count, memory, None,
                         notes=(f"{name}: a device by its memory alone, no throughput estimate; --link pcie or "
                                f"--link nvlink adds the all-reduce cost (known devices: {', '.join(HARDWARE)})",))
    if link not in LINKS:
        raise DeviceSpecError(f"--link {link!r} unknown; use {' or '.join(LINKS)}")
    figures = LINKS[link]
    return DeviceSet(f"{count}x {name} over {figures.name}", "cuda", count, memory, None, link=figures,
                     notes=(f"{name}: a device by its memory alone, no throughput estimate; all-reduce time from "
                            f"--link {link}: {figures.name}, {figures.bandwidth / 1e9:g} GB/s per direction, "
                            f"{figures.latency * 1e6:g} us per small all-reduce",))


def _no_link(link: str | None, devices: str) -> None:
    if link is not None:
        raise DeviceSpecError(f"--link is for devices named by their memory alone (e.g. 4x48GB), not {devices}")


def _custom_memory(text: str) -> int | None:
    """Bytes of a device named by its memory ("48GB", "24GiB"), else None."""
    if not re.fullmatch(r"[\d.]+\s*[kmgt]i?b", text, re.IGNORECASE):
        return None
    try:
        return parse_size(text)
    except ValueError:
        return None


def cpu_device_set(count: int, device_memory: int | None = None) -> DeviceSet:
    memory = device_memory or cpu_device_memory(count)
    return DeviceSet(f"cpu:{count}", "cpu", count, memory, cpu_hardware(count, memory))


def device_set(spec: str | None, device_memory: int | None = None, link: str | None = None) -> DeviceSet:
    """The pool a description names ("8xH100-80GB", "cpu:4"), else the devices discovered."""
    described = describe(spec, device_memory, link) if spec else None
    if described:
        return described
    _no_link(link, f"the devices found ({spec or 'auto'})")
    try:
        found = discover(spec, device_memory)
    except DeviceSpecError:
        raise DeviceSpecError(f"devices {spec!r}: neither discoverable (auto, cpu:N, 0,1) nor a "
                              f"description such as 8xH100-80GB or 4x48GB (known: {', '.join(HARDWARE)})") from None
    return device_set_of(found)


def device_set_of(found: list[Device]) -> DeviceSet:
    usable = [d for d in found if d.available and d.memory_total]
    notes = [f"{d.id} left out: {d.error or 'its memory size is unavailable'}"
             for d in found if not (d.available and d.memory_total)]
    if not usable:
        raise DeviceSpecError("no usable device: " + "; ".join(notes or ["none found"]))
    first, count = usable[0], len(usable)
    memory = min(d.memory_total for d in usable)
    in_use = max(d.memory_used or 0 for d in usable)
    if len({d.name for d in usable}) > 1:
        notes.append("the devices differ; planning with the smallest memory and the first one's figures")
    if first.kind == "cpu":
        return DeviceSet(f"cpu:{count}", "cpu", count, memory, cpu_hardware(count, memory), in_use,
                          tuple(notes))
    hardware = hardware_for_gpu(first.name)
    if hardware is None:
        notes.append(f"no figures for {first.name}: throughput not estimated")
    return DeviceSet(f"{count}x {first.name}", "cuda", count, memory, hardware, in_use, tuple(notes))


