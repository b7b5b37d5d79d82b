"""The re-identification key, in the index: per (study, device) the seed the study was
de-identified with and the pseudonyms it gave, per UID the job that sent it. Nothing here
is ever logged."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.external.deidentify import Pseudonyms
from gateway.index.tables import PseudonymRow, PseudonymStudyRow, utcnow


@dataclass(frozen=True)
class Link:
    """A study as one device knows it."""

    id: int
    study_uid: str
    device_id: str
    pseudo_study_uid: str
    pseudo_patient_id: str


def seed_of(session: Session, study_uid: str, device_id: str) -> str:
    """The seed this study is de-identified with for this device: the one used before (a
    resent series gets the same pseudonyms), else a new random one."""
    row = _link_row(session, study_uid, device_id)
    return row.seed if row is not None else secrets.token_hex(16)


def record(
    session: Session,
    *,
    study_uid: str,
    device_id: str,
    seed: str,
    pseudo_patient_id: str,
    job_id: int,
    made: Pseudonyms,
) -> Link:
    """Keep what ``seed`` made of the study (adding to what an earlier send kept)."""
    row = _link_row(session, study_uid, device_id)
    if row is None:
        row = PseudonymStudyRow(
            study_uid=study_uid,
            device_id=device_id,
            seed=seed,
            pseudo_study_uid=made.uids[study_uid],
            pseudo_patient_id=pseudo_patient_id,
            created_at=utcnow(),
        )
        session.add(row)
        session.flush()
    known = set(
        session.scalars(select(PseudonymRow.original_uid).where(PseudonymRow.link_id == row.id))
    )
    for original, pseudonym in made.uids.items():
        if original in known:
            continue
        kind = made.kinds.get(original, "other")
        session.add(
            PseudonymRow(
                link_id=row.id,
                job_id=job_id if kind in ("series", "instance") else None,
                kind=kind,
                original_uid=original,
                pseudo_uid=pseudonym,
            )
        )
    return _link(row)


def link_by_pseudonym(
    session: Session, pseudo_study_uid: str, device_ids: list[str]
) -> Link | None:
    """The study a vendor's object names by its pseudonymised Study Instance UID."""
    row = session.scalars(
        select(PseudonymStudyRow)
        .where(
            PseudonymStudyRow.pseudo_study_uid == pseudo_study_uid,
            PseudonymStudyRow.device_id.in_(device_ids),
        )
        .order_by(PseudonymStudyRow.id.desc())
    ).first()
    return _link(row) if row is not None else None


@dataclass(frozen=True)
class Sent:
    """A UID as sent: what it was, what kind, and which job sent it."""

    original_uid: str
    kind: str
    job_id: int | None


def sent_uids(session: Session, link: Link) -> dict[str, Sent]:
    """Pseudonym → what it stands for, for every UID of the study sent to the device."""
    rows = session.scalars(select(PseudonymRow).where(PseudonymRow.link_id == link.id))
    return {row.pseudo_uid: Sent(row.original_uid, row.kind, row.job_id) for row in rows}


def _link_row(session: Session, study_uid: str, device_id: str) -> PseudonymStudyRow | None:
    return session.scalar(
        select(PseudonymStudyRow).where(
            PseudonymStudyRow.study_uid == study_uid, PseudonymStudyRow.device_id == device_id
        )
    )


def _link(row: PseudonymStudyRow) -> Link:
    return Link(row.id, row.study_uid, row.device_id, row.pseudo_study_uid, row.pseudo_patient_id)
