//! An independent reader of Ollama Modelfiles, written from its documented grammar (tests only).
#![allow(dead_code)]
