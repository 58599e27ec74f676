//! What the server and the node agent both know about a GPU node, without the agent's system
//! calls: the GPU backend trait with its fake, the runtime trait with its fake and the agent's
//! side of a heartbeat (the server's in-process fleet runs both), the signature of an ingress
//! line, and renters' SSH public keys. The server depends on this, not on the
//! agent, so NVML, Docker and the agent's system calls stay out of it.

pub mod gpu;
pub mod ingress;
pub mod runtime;
pub mod ssh_key;
