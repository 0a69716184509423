use tonic::Code;

use crate::helpers::*;
use switchboard::pb::{
    Customer, DeleteCustomerRequest, GetCustomerRequest, ListCustomersRequest,
    LookupCustomerRequest, UpsertCustomerRequest,
};

fn upsert(customer: Customer) -> UpsertCustomerRequest {
    UpsertCustomerRequest {
        customer: Some(customer),
    }
}

fn lookup(phone: &str) -> LookupCustomerRequest {
    LookupCustomerRequest {
        phone: phone.into(),
        org_id: String::new(),
    }
}

#[tokio::test]
async fn upsert_is_keyed_by_org_and_phone() {
    let app = TestApp::spawn().await;
    let mut customers = app.customers().await;
    let first = customers
        .upsert_customer(as_who(
            Who::AcmeManager,
            upsert(new_customer("", "+1 650 555 0199", "Katherine Johnson")),
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_eq!(first.org_id, ACME);
    assert_eq!(first.phone, "+16505550199");
    let second = customers
        .upsert_customer(as_who(
            Who::AcmeAdmin,
            upsert(new_customer(
                "",
                "(+1) 650-555-0199",
                "Katherine G. Johnson",
            )),
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_eq!(
        second.id, first.id,
        "same (org, phone): the same customer, updated"
    );
    assert_eq!(second.name, "Katherine G. Johnson");
    assert_eq!(second.created_at, first.created_at);

    let found = customers
        .lookup_customer(as_who(Who::AcmeViewer, lookup("+16505550199")))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_eq!(found, second);
    let got = customers
        .get_customer(as_who(
            Who::AcmeViewer,
            GetCustomerRequest {
                id: first.id.clone(),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_eq!(got, second);

    // The same phone in another org is another customer.
    let other = customers
        .upsert_customer(as_who(
            Who::BluebirdAdmin,
            upsert(new_customer("", "+16505550199", "Dorothy Vaughan")),
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_ne!(other.id, first.id);
    assert_eq!(other.org_id, BLUEBIRD);

    customers
        .delete_customer(as_who(
            Who::AcmeManager,
            DeleteCustomerRequest {
                id: first.id.clone(),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_code(
        customers
            .get_customer(as_who(Who::AcmeAdmin, GetCustomerRequest { id: first.id }))
            .await,
        Code::NotFound,
    );
    assert_code(
        customers
            .lookup_customer(as_who(Who::AcmeAdmin, lookup("+16505550199")))
            .await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn list_customers_pages() {
    let app = TestApp::spawn().await;
    let mut customers = app.customers().await;
    for i in 0..4 {
        customers
            .upsert_customer(as_who(
                Who::BluebirdManager,
                upsert(new_customer("", &format!("+4420718387{i:02}"), "Caller")),
            ))
            .await
            .unwrap_or_else(|s| panic!("{s:?}"));
    }
    let first = customers
        .list_customers(as_who(
            Who::BluebirdViewer,
            ListCustomersRequest {
                page_size: 3,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_eq!(first.customers.len(), 3);
    assert!(!first.next_page_token.is_empty());
    let second = customers
        .list_customers(as_who(
            Who::BluebirdViewer,
            ListCustomersRequest {
                page_size: 3,
                page_token: first.next_page_token,
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_eq!(second.customers.len(), 2);
    assert!(second.next_page_token.is_empty());
    assert!(first
        .customers
        .iter()
        .chain(&second.customers)
        .all(|c| c.org_id == BLUEBIRD));
}

#[tokio::test]
async fn customer_errors() {
    let app = TestApp::spawn().await;
    let mut customers = app.customers().await;
    let message = assert_code(
        customers
            .upsert_customer(as_who(Who::AcmeAdmin, upsert(new_customer("", "12", "X"))))
            .await,
        Code::InvalidArgument,
    );
    assert!(message.starts_with("phone"), "{message}");
    assert_code(
        customers
            .upsert_customer(as_who(
                Who::AcmeAdmin,
                UpsertCustomerRequest { customer: None },
            ))
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        customers
            .get_customer(as_who(
                Who::AcmeAdmin,
                GetCustomerRequest {
                    id: "ca000000".into(),
                },
            ))
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        customers
            .list_customers(as_who(
                Who::AcmeAdmin,
                ListCustomersRequest {
                    page_size: 1,
                    page_token: "%%%".into(),
                },
            ))
            .await,
        Code::InvalidArgument,
    );
    for who in [Who::AcmeViewer, Who::BluebirdViewer] {
        assert_code(
            customers
                .upsert_customer(as_who(
                    who,
                    upsert(new_customer("", "+16505550100", "Viewer Wrote")),
                ))
                .await,
            Code::PermissionDenied,
        );
    }
    assert_code(
        customers
            .delete_customer(as_who(
                Who::AcmeViewer,
                DeleteCustomerRequest {
                    id: ACME_CUSTOMER.into(),
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    // The platform must say which org a shared phone belongs to.
    let message = assert_code(
        customers
            .lookup_customer(as_who(Who::Service, lookup(SHARED_CALLER)))
            .await,
        Code::FailedPrecondition,
    );
    assert!(message.contains("org_id"), "{message}");
    let found = customers
        .lookup_customer(as_who(
            Who::Service,
            LookupCustomerRequest {
                phone: SHARED_CALLER.into(),
                org_id: BLUEBIRD.into(),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_eq!(found.id, BLUEBIRD_CUSTOMER);
    let count: i64 = sqlx::query_scalar("select count(*) from public.customers")
        .fetch_one(&app.db.pool)
        .await
        .unwrap_or_default();
    assert_eq!(count, 2, "no failed call wrote a row");
}

#[tokio::test]
async fn only_valid_numbers_are_stored_for_customers() {
    let app = TestApp::spawn().await;
    let mut customers = app.customers().await;
    let count = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from public.customers")
            .fetch_one(&app.db.pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let before = count().await;
    // Well-formed E.164, no number: `+1 999 000 0000` was stored as
    // `+19990000000` (NANP has no area code 999).
    for number in ["+10", "+19990000000", "+1 999 000 0000"] {
        let message = assert_code(
            customers
                .upsert_customer(as_who(
                    Who::AcmeAdmin,
                    upsert(new_customer("", number, "Nobody")),
                ))
                .await,
            Code::InvalidArgument,
        );
        assert!(
            message.starts_with("phone") && message.contains("not a valid number"),
            "{number}: {message}"
        );
        // A lookup does not validate: an impossible number is not found.
        assert_code(
            customers
                .lookup_customer(as_who(Who::AcmeViewer, lookup(number)))
                .await,
            Code::NotFound,
        );
    }
    assert_eq!(count().await, before, "nothing was written");
    let stored = customers
        .upsert_customer(as_who(
            Who::AcmeAdmin,
            upsert(new_customer("", "+1 (415) 555-0150", "Somebody")),
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_eq!(stored.phone, "+14155550150");
    let found = customers
        .lookup_customer(as_who(Who::AcmeViewer, lookup("+14155550150")))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_eq!(found.id, stored.id);
}
