// Placeholder so the library has a translation unit until the engine lands.
namespace ublk {
int ublk_placeholder = 0;
}  // namespace ublk
