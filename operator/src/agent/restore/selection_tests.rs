//! Tests of the selection: a dump's listing read, what a table brings along, table names
//! and the pg_restore runs that seed it.

use super::*;

/// `pg_restore --list --verbose` of a dump with a table `sales."my orders"` (serial key,
/// default, index, a foreign key to `public.customers`, a view on it) and
/// `public.customers` (comment, grant, trigger).
const LISTING: &str = "\
;
; Selected TOC Entries:
;
3363; 0 0 ENCODING - ENCODING 
3364; 0 0 STDSTRINGS - STDSTRINGS 
3365; 0 0 SEARCHPATH - SEARCHPATH 
3366; 1262 16384 DATABASE - shop postgres
6; 2615 16385 SCHEMA - sales postgres
217; 1259 16396 TABLE public customers postgres
3367; 0 0 COMMENT public TABLE customers postgres
;\tdepends on: 217
3368; 0 0 ACL public TABLE customers postgres
;\tdepends on: 217
216; 1259 16387 TABLE sales my orders postgres
;\tdepends on: 6
215; 1259 16386 SEQUENCE sales my orders_id_seq postgres
;\tdepends on: 6 216
3369; 0 0 SEQUENCE OWNED BY sales my orders_id_seq postgres
;\tdepends on: 215
218; 1259 16409 VIEW sales v postgres
;\tdepends on: 216 216 216 6
3206; 2604 16390 DEFAULT sales my orders id postgres
;\tdepends on: 215 216 216
3360; 0 16396 TABLE DATA public customers postgres
;\tdepends on: 217
3359; 0 16387 TABLE DATA sales my orders postgres
;\tdepends on: 216
3370; 0 0 SEQUENCE SET sales my orders_id_seq postgres
;\tdepends on: 215
3212; 2606 16402 CONSTRAINT public customers customers_pkey postgres
;\tdepends on: 217
3210; 2606 16395 CONSTRAINT sales my orders my orders_pkey postgres
;\tdepends on: 216
3208; 1259 16408 INDEX sales my orders_c_idx postgres
;\tdepends on: 216
3214; 2620 16413 TRIGGER public customers t postgres
;\tdepends on: 217
3213; 2606 16403 FK CONSTRAINT sales my orders my orders_cust_fkey postgres
;\tdepends on: 3212 217 216
";

fn ids(entries: &[TocEntry]) -> Vec<u32> {
    entries.iter().map(|e| e.id).collect()
}

#[test]
fn the_listing_is_read_with_kinds_and_dependencies() {
    let toc = parse_toc(LISTING);
    assert_eq!(toc.len(), 21);
    let fk = toc.iter().find(|e| e.id == 3213).expect("fk");
    assert_eq!(fk.desc, "FK CONSTRAINT");
    assert_eq!(fk.deps, [3212, 217, 216]);
    let owned = toc.iter().find(|e| e.id == 3369).expect("owned by");
    assert_eq!(owned.desc, "SEQUENCE OWNED BY");
    assert_eq!(
        toc.iter().find(|e| e.id == 3359).expect("data").desc,
        "TABLE DATA"
    );
    assert_eq!(
        schema_name(toc.iter().find(|e| e.id == 6).expect("schema")),
        Some("sales")
    );
}

#[test]
fn a_table_comes_with_what_belongs_to_it_but_not_views_or_foreign_keys_to_tables_left_out() {
    let toc = parse_toc(LISTING);
    // pg_restore --schema sales --table "my orders" matches the table and its rows.
    let chosen = select(&toc, &BTreeSet::from([216, 3359]), |_| false);
    assert_eq!(
        ids(&chosen),
        [
            3363, 3364, 3365, 216, 215, 3369, 3206, 3359, 3370, 3210, 3208
        ]
    );
}

#[test]
fn foreign_keys_come_when_both_tables_do_and_a_missing_schema_is_created() {
    let toc = parse_toc(LISTING);
    let chosen = select(&toc, &BTreeSet::from([216, 217]), |name| name == "sales");
    let chosen = ids(&chosen);
    for id in [6, 3213, 3212, 3214, 3367, 3368, 3360] {
        assert!(chosen.contains(&id), "{id} in {chosen:?}");
    }
    assert!(!chosen.contains(&218), "the view stays out");
    assert!(!chosen.contains(&3366), "the database entry stays out");
}

#[test]
fn table_names_are_read_with_and_without_schema_and_quotes() {
    assert_eq!(qualified_name("orders"), Ok((None, "orders".into())));
    assert_eq!(
        qualified_name("sales.Orders"),
        Ok((Some("sales".into()), "Orders".into()))
    );
    assert_eq!(
        qualified_name("\"my.schema\".\"a \"\"b\"\"\""),
        Ok((Some("my.schema".into()), "a \"b\"".into()))
    );
    assert!(qualified_name("a.b.c").is_err());
    assert!(qualified_name("a.").is_err());
    assert!(qualified_name("\"a").is_err());
}

#[test]
fn each_schema_of_the_tables_is_one_pg_restore_run() {
    let selection = Selection {
        schemas: vec!["audit".into()],
        tables: vec!["sales.orders".into(), "items".into(), "sales.lines".into()],
        ..Selection::default()
    };
    let runs = selection.seed_runs().expect("runs");
    assert_eq!(
        runs,
        [
            vec!["--schema", "audit"],
            vec!["--table", "items"],
            vec!["--schema", "sales", "--table", "orders", "--table", "lines"],
        ]
    );
}
