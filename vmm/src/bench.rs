//! Cost of one debug exit through the monitor's whole path, against a bare
//! KVM_RUN loop on the same hardware breakpoint in the same process.
