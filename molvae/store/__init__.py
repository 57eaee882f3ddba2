"""The run folder: its file names and records, parameters as .npz, orbax checkpoints, and where a
run or a shipped model lives. Light on purpose: `molvae.store.names` and `molvae.store.locate`
import no JAX (the CLI checks its arguments with them before JAX starts)."""
