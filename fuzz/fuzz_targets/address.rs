//! Fuzzes the address grammar: any string parses to an address or an error, never a panic,
//! and whatever parses prints back in a form that parses to the same address.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sockit::Address;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for default in [None, Some(9000)] {
        if let Ok(address) = Address::parse(text, default) {
            let again = Address::parse(&address.to_string(), None).expect("printed form parses");
            assert_eq!(again, address);
        }
    }
    if let Some((host, port)) = text.split_once(' ') {
        let _ = Address::from_host_port(host, port);
    }
});
