//! leadloop email connector (in progress).

pub mod templates;
