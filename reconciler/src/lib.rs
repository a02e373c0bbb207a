//! Pure decisions: (desired, observed) → actions. No I/O, no clock reads.
