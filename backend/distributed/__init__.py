"""Computing elsewhere: the executor interface, local pools, the ZeroMQ protocol, executor and worker."""
