//! `provision` end to end on the local provider (being written).
