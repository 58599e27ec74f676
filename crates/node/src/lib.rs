//! What the server and the node agent both know about a GPU node, without the agent's runtime:
//! the GPU backend trait with its fake (the server's in-process fleet runs on it), the signature
//! of an ingress line, and renters' SSH public keys. The server depends on this, not on the
//! agent, so NVML, Docker and the agent's system calls stay out of it.

pub mod gpu;
pub mod ingress;
pub mod ssh_key;
