//! A stateful in-process Ollama server for the create pipeline tests.
#![allow(dead_code)]
