//! IoT Edge deployment manifests: the checker and the renderer.

#![forbid(unsafe_code)]
