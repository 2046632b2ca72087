//! Property tests of the address grammar: arbitrary text never panics the parser, and every
//! address prints in a form that parses back to itself.

use proptest::prelude::*;
use sockit::Address;

proptest! {
    #[test]
    fn arbitrary_text_parses_or_fails_without_panicking(text in ".{0,64}") {
        let _ = Address::parse(&text, None);
        let _ = Address::parse(&text, Some(9000));
        let _ = Address::from_host_port(&text, "80");
    }

    #[test]
    fn every_parsed_address_prints_in_a_form_that_parses_back(
        scheme in prop::sample::select(vec!["", "tcp:", "udp:", "tls:"]),
        host in prop::sample::select(vec![
            "127.0.0.1", "[::1]", "[fe80::1:2]", "localhost", "example.org", "a-b.c_d",
        ]),
        port in 1u16..,
    ) {
        let text = format!("{scheme}{host}:{port}");
        let address = Address::parse(&text, None).unwrap();
        prop_assert_eq!(Address::parse(&address.to_string(), None).unwrap(), address);
    }

    #[test]
    fn unix_names_round_trip(name in "[a-zA-Z0-9_./-]{1,100}", abstract_ in any::<bool>()) {
        let text = if abstract_ { format!("unix:@{name}") } else { format!("unix:{name}") };
        let address = Address::parse(&text, None).unwrap();
        prop_assert_eq!(address.to_string(), text);
    }
}
