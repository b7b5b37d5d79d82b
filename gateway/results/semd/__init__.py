"""SEMD «Протокол инструментального исследования» (HL7 CDA R2, РЭМД kind 174).

Modules
-------
config
    ``configs/semd.yaml``: organisations, the responsible doctor, НСИ codes; СНИЛС rules.
facts
    What a document states, gathered from a job and checked up front (:class:`SemdMissing`).
document
    The CDA document itself, its text and its metadata sidecar.
validation
    The official XSD and schematron, applied before a SEMD is sent.
"""
