-- busted helper: runs before the specs, inside our host. Shared test utilities live
-- in tests/lua/support/*.lua and are required by the specs that need them.
package.path = "tests/lua/?.lua;" .. package.path
