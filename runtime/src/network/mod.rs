//! Container networking: bridges, IPAM, DNS, published ports.
