//! What `tug`'s commands and tests share with each other beyond the command line.

pub mod local;
