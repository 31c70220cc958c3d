"""Screen readouts from measurement tables: well aggregates, cell cycle (4N fraction), assay quality (Z')."""

from __future__ import annotations

from cellflow.readouts.assay import (
    BINS_PER_OCTAVE,
    READOUTS,
    Controls,
    PloidyParams,
    dna_histogram,
    fraction_4n,
    g1_peak,
    well_table,
    z_prime,
    zprime_table,
)

__all__ = [
    "BINS_PER_OCTAVE",
    "READOUTS",
    "Controls",
    "PloidyParams",
    "dna_histogram",
    "fraction_4n",
    "g1_peak",
    "well_table",
    "z_prime",
    "zprime_table",
]
