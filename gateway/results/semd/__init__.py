"""SEMD «Протокол инструментального исследования» (HL7 CDA R2, РЭМД kind 174).

Modules
-------
document
    The configuration, the facts gathered from a job, and the CDA document itself.
validation
    The official XSD and schematron, applied before a SEMD is sent.
"""
