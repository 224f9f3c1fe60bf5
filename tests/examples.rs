//! Examples: written below.
