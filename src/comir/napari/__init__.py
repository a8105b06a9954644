"""napari plugin (npe2): register, train and evaluate CoMIR models inside the viewer.

Install with ``pip install 'comir[napari]'``; napari then lists comir's contributions
(``napari.yaml`` next to this file, found through the ``napari.manifest`` entry point):

* dock widgets **Register** (:class:`~comir.napari.register_widget.RegisterWidget`),
  **Train** (:class:`~comir.napari.train_widget.TrainWidget`) and **Evaluate**
  (:class:`~comir.napari.evaluate_widget.EvaluateWidget`) under *Plugins → CoMIR*;
* a reader (:func:`~comir.napari.io.get_reader`) for the files comir reads, pyramidal
  OME-TIFF as a multiscale layer; a writer for CoMIRs (:func:`~comir.napari.io.write_comir`);
* the bundled samples as *File → Open Sample → CoMIR* (:mod:`comir.napari.sample_data`).

Everything napari or Qt is imported only inside this package (nothing here is imported by
``import comir``), so the core install stays free of Qt. See docs/napari.md.
"""
