//! leadloop's end-to-end tests: one integration-test binary, one module per area.

mod caldav;
mod crash;
mod email;
mod faults;
mod guard;
mod nospace;
mod nurture;
mod salesforce;
mod sla;
mod sync_crash;
