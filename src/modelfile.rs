//! Modelfiles: see the module body.
