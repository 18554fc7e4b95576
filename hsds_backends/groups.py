"""Groups of a domain, read like h5py groups: links, paths, soft and external links.

A group JSON holds ``links`` and ``attributes`` inline (docs/hsds-format.md §2);
``links`` is a dict name → link, or in older layouts a list of links with a
``title``. A link's ``class`` is ``H5L_TYPE_HARD`` (``id``), ``H5L_TYPE_SOFT``
(``h5path``) or ``H5L_TYPE_EXTERNAL`` (``h5path`` and ``h5domain``, or ``file``).
Object ids say what they name: ``g-`` groups, ``d-`` datasets, ``t-`` committed
types (§1.1).

:class:`AsyncGroup` has async methods (what needs no I/O, ``keys``, ``len``,
``iter`` and ``attrs``, is plain); :class:`Group` is its synchronous view.
Hard links are followed, soft links are followed when a path is resolved, and
an external link is returned as an :class:`ExternalLink` saying where it
points (it is never followed: the target is another domain).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, Union

from .attrs import AttributeManager
from .errors import DatasetJsonError, LinkNotFoundError, NotFoundError

if TYPE_CHECKING:
    from .api import AsyncDataset, AsyncDomain, Domain

__all__ = [
    "AsyncGroup",
    "ExternalLink",
    "Group",
    "HardLink",
    "LinkNotFoundError",
    "SoftLink",
    "group_links",
    "join_path",
]

T = TypeVar("T")
#: Soft links followed while resolving one path before giving up (a cycle).
MAX_SOFT_HOPS = 32


@dataclass(frozen=True)
class HardLink:
    """A hard link: the object id it names."""

    id: str


@dataclass(frozen=True)
class SoftLink:
    """A soft link: the path it names (absolute, or relative to the link's group)."""

    path: str


@dataclass(frozen=True)
class ExternalLink:
    """An external link, reported and never followed.

    Attributes
    ----------
    filename
        The domain (or HDF5 file) it points into (HSDS ``h5domain`` or ``file``).
    path
        The path inside that domain (HSDS ``h5path``).
    """

    filename: str
    path: str


Link = Union[HardLink, SoftLink, ExternalLink]


def group_links(group_json: Mapping[str, Any]) -> dict[str, Any]:
    """Return a group JSON's links as a dict name → link JSON (both layouts, §2)."""
    links = group_json.get("links") or {}
    if isinstance(links, list):  # older layouts keep a list of link objects with a title
        return {str(lk.get("title")): lk for lk in links if isinstance(lk, dict)}
    if not isinstance(links, dict):
        raise DatasetJsonError(f"group {group_json.get('id')!r} has links {str(links)[:60]!r}; expected an object or a list")
    return dict(links)


def parse_link(name: str, link_json: Any) -> Link:
    """Return the link object of one link JSON (§2)."""
    if not isinstance(link_json, dict):
        raise DatasetJsonError(f"link {name!r} is {str(link_json)[:60]!r}; expected an object with a 'class'")
    cls = link_json.get("class", "H5L_TYPE_HARD")
    if cls == "H5L_TYPE_HARD" and "id" in link_json:
        return HardLink(str(link_json["id"]))
    if cls == "H5L_TYPE_SOFT":
        return SoftLink(str(link_json.get("h5path", "")))
    if cls == "H5L_TYPE_EXTERNAL":
        return ExternalLink(str(link_json.get("h5domain") or link_json.get("file") or ""), str(link_json.get("h5path", "")))
    raise DatasetJsonError(f"link {name!r} has class {cls!r} (or no 'id'); expected H5L_TYPE_HARD, H5L_TYPE_SOFT or H5L_TYPE_EXTERNAL")


def join_path(base: str, name: str) -> str:
    """Return the absolute path of ``name`` seen from group ``base`` (``..`` and ``.`` allowed)."""
    parts = [] if name.startswith("/") else [p for p in base.split("/") if p]
    for p in name.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if parts:
                parts.pop()
        else:
            parts.append(p)
    return "/" + "/".join(parts)


class AsyncGroup:
    """A group of an open domain (the root group is ``await domain.root()``).

    Parameters
    ----------
    domain
        The open domain.
    obj_id
        The group's id (``g-…``).
    name
        The absolute path it was reached by (``/`` for the root).
    group_json
        The group JSON (``links``, ``attributes``).
    """

    def __init__(self, domain: AsyncDomain, obj_id: str, name: str, group_json: Mapping[str, Any]) -> None:
        self.domain = domain
        self.id = obj_id
        self.name = name
        self.json = group_json
        self._links = group_links(group_json)

    def __repr__(self) -> str:
        return f"<AsyncGroup {self.name!r} ({len(self)} members)>"

    @property
    def attrs(self) -> AttributeManager:
        """The group's attributes (a read-only mapping)."""
        return AttributeManager(self.json.get("attributes"), f"group {self.name!r} of domain {self.domain.domain!r}")

    # ------------------------------------------------------ no I/O: this group's own links
    def keys(self) -> list[str]:
        """Return the link names of this group, sorted (as h5py lists them)."""
        return sorted(self._links)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._links)

    def getlink(self, name: str) -> Link:
        """Return the link ``name`` of this group itself (no path, nothing followed)."""
        lj = self._links.get(name)
        if lj is None:
            raise LinkNotFoundError(
                f"no link {name!r} in group {self.name!r} of domain {self.domain.domain!r}; links there: {self.keys()[:20]}"
            )
        return parse_link(name, lj)

    # ------------------------------------------------------------------- resolving paths
    async def _open(self, obj_id: str, path: str) -> AsyncGroup | AsyncDataset:
        if obj_id.startswith("d-"):
            return await self.domain._dataset(obj_id, path)
        j = await self.domain._obj(obj_id)
        if obj_id.startswith("g-") or "links" in j:
            return AsyncGroup(self.domain, obj_id, path, j)
        raise NotFoundError(f"{path!r} in domain {self.domain.domain!r} is {obj_id}, neither a group nor a dataset (a committed type?)")

    async def get_object(self, path: str) -> AsyncGroup | AsyncDataset | ExternalLink:
        """Return the group or dataset at ``path`` (relative to this group, or absolute).

        Soft links are followed; an external link at the end of the path is returned
        as an :class:`ExternalLink`.

        Raises
        ------
        LinkNotFoundError
            A link on the path does not exist, a soft link dangles or loops, or the
            path goes through a dataset or an external link.
        """
        target = join_path(self.name, path)
        if target == self.name:
            return self
        group: AsyncGroup = self if target.startswith(self.name.rstrip("/") + "/") else await self.domain.root()
        done = [p for p in group.name.split("/") if p]
        todo = [p for p in target.split("/") if p][len(done) :]
        hops = 0
        while todo:
            name = todo.pop(0)
            link = group.getlink(name)
            here = join_path(group.name, name)
            if isinstance(link, SoftLink):
                hops += 1
                if hops > MAX_SOFT_HOPS:
                    raise LinkNotFoundError(f"more than {MAX_SOFT_HOPS} soft links resolving {path!r} in domain {self.domain.domain!r} (a loop?)")
                dest = join_path(group.name, link.path)
                rest = "/".join(todo)
                target = join_path(dest, rest) if rest else dest
                group = await self.domain.root()
                todo = [p for p in target.split("/") if p]
                continue
            if isinstance(link, ExternalLink):
                if todo:
                    raise LinkNotFoundError(
                        f"{here!r} in domain {self.domain.domain!r} is an external link to {link.path!r} in {link.filename!r}; "
                        "open that domain to go further"
                    )
                return link
            obj = await group._open(link.id, here)
            if not todo:
                return obj
            if not isinstance(obj, AsyncGroup):
                raise LinkNotFoundError(f"{here!r} in domain {self.domain.domain!r} is a dataset, not a group; {path!r} cannot go through it")
            group = obj
        return group

    def __getitem__(self, path: str) -> Awaitable[AsyncGroup | AsyncDataset | ExternalLink]:
        """``await group[path]``: same as :meth:`get_object`."""
        return self.get_object(path)

    async def get(self, path: str, default: T | None = None, *, getlink: bool = False) -> AsyncGroup | AsyncDataset | Link | T | None:
        """Return the object at ``path``, or ``default`` when there is none.

        With ``getlink=True``, return the link itself (:class:`HardLink`,
        :class:`SoftLink` or :class:`ExternalLink`) of the last path component.
        """
        try:
            if getlink:
                parent, _, name = join_path(self.name, path).rpartition("/")
                grp = await self.get_object(parent or "/")
                if not isinstance(grp, AsyncGroup):
                    return default
                return grp.getlink(name)
            return await self.get_object(path)
        except LinkNotFoundError:
            return default

    async def contains(self, path: str) -> bool:
        """Return whether the last link of ``path`` exists, as h5py does (a dangling soft link counts)."""
        full = join_path(self.name, path)
        if full == "/":
            return True
        parent, _, name = full.rpartition("/")
        grp = await self.get(parent or "/")
        return isinstance(grp, AsyncGroup) and name in grp._links

    async def values(self) -> list[AsyncGroup | AsyncDataset | ExternalLink]:
        """Return the members of this group, in :meth:`keys` order."""
        return [await self.get_object(k) for k in self.keys()]

    async def items(self) -> list[tuple[str, AsyncGroup | AsyncDataset | ExternalLink]]:
        """Return ``(name, member)`` pairs, in :meth:`keys` order."""
        return [(k, await self.get_object(k)) for k in self.keys()]

    async def walk(self) -> list[tuple[str, Link, AsyncGroup | AsyncDataset | None]]:
        """Return every link below this group, depth first, names sorted.

        Each item is ``(path relative to this group, link, object)``; the object is
        ``None`` for soft and external links (not followed), and a group reached
        again by another hard link is listed but not descended into again.
        """
        out: list[tuple[str, Link, AsyncGroup | AsyncDataset | None]] = []
        seen = {self.id}

        async def go(group: AsyncGroup, prefix: str) -> None:
            for name in group.keys():
                link = group.getlink(name)
                rel = prefix + name
                if not isinstance(link, HardLink):
                    out.append((rel, link, None))
                    continue
                obj = await group._open(link.id, join_path(group.name, name))
                out.append((rel, link, obj))
                if isinstance(obj, AsyncGroup) and obj.id not in seen:
                    seen.add(obj.id)
                    await go(obj, rel + "/")

        await go(self, "")
        return out

    async def visititems(self, func: Callable[[str, AsyncGroup | AsyncDataset], T | None]) -> T | None:
        """Call ``func(name, object)`` on each object below this group, as h5py does.

        Objects are reached by hard links only, each once; names are relative to this
        group. A ``func`` that returns something other than ``None`` stops the visit
        and that value is returned.
        """
        return _visit(await self.walk(), self.id, func)

    async def visit(self, func: Callable[[str], T | None]) -> T | None:
        """Call ``func(name)`` on each object's name below this group (see :meth:`visititems`)."""
        return await self.visititems(lambda name, _obj: func(name))


def _visit(entries: list[tuple[str, Link, Any]], own_id: str, func: Callable[[str, Any], T | None]) -> T | None:
    """h5py's visit order over :meth:`AsyncGroup.walk` entries: hard links, each object once."""
    seen = {own_id}
    for rel, link, obj in entries:
        if obj is None or not isinstance(link, HardLink) or link.id in seen:
            continue
        seen.add(link.id)
        r = func(rel, obj)
        if r is not None:
            return r
    return None




class Group(Mapping[str, Any]):
    """Synchronous view of an :class:`AsyncGroup`, a read-only mapping like an h5py group.

    ``group[path]`` returns a :class:`Group`, a :class:`~hsds_backends.api.Dataset`
    or an :class:`ExternalLink`; paths may be relative or absolute.
    """

    def __init__(self, domain: Domain, agroup: AsyncGroup) -> None:
        self._domain = domain
        self.async_group = agroup
        self.name: str = agroup.name
        """The absolute path this group was reached by."""
        self.id: str = agroup.id
        """The group's object id (``g-…``)."""
        self.attrs: AttributeManager = agroup.attrs
        """The group's attributes (a read-only mapping)."""

    def __repr__(self) -> str:
        return repr(self.async_group).replace("AsyncGroup", "Group")

    def _run(self, aw: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await aw

        return self._domain._lt.run(wrapped())

    def _wrap(self, obj: Any) -> Any:
        return self._domain._wrap(obj)  # the domain knows the sync classes (api imports this module)

    def __getitem__(self, path: str) -> Any:
        return self._wrap(self._run(self.async_group.get_object(path)))

    def get(self, path: str, default: Any = None, *, getlink: bool = False) -> Any:
        """Return the object at ``path`` (or its link with ``getlink=True``), or ``default``."""
        return self._wrap(self._run(self.async_group.get(path, default, getlink=getlink)))

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and self._run(self.async_group.contains(path))

    def __iter__(self) -> Iterator[str]:
        return iter(self.async_group.keys())

    def __len__(self) -> int:
        return len(self.async_group)

    def walk(self) -> list[tuple[str, Link, Any]]:
        """Every link below this group (see :meth:`AsyncGroup.walk`), objects wrapped."""
        return [(rel, link, self._wrap(obj)) for rel, link, obj in self._run(self.async_group.walk())]

    def visititems(self, func: Callable[[str, Any], T | None]) -> T | None:
        """Call ``func(name, object)`` on each object below this group (see :meth:`AsyncGroup.visititems`)."""
        return _visit(self.walk(), self.id, func)  # func runs here, so it may read what it is given

    def visit(self, func: Callable[[str], T | None]) -> T | None:
        """Call ``func(name)`` on each object's name below this group."""
        return _visit(self.walk(), self.id, lambda name, _obj: func(name))
